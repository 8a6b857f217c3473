#!/usr/bin/env bash
# Create a separate virtual environment with LMCache 0.5.6 (CPU, numba path) for
# `kvcast bench codec --lmcache-python VENV/bin/python`. LMCache pins numpy (<= 2.2.6) and declares
# heavy CUDA dependencies, so it gets its own environment and a lean install: the wheel without
# its declared dependencies, then only what its CacheGen serializer imports on a CPU machine.
#
# Usage: scripts/setup_lmcache.sh [VENV_DIR]   (default: $KVCAST_LMCACHE_VENV or ../lmcache-venv)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${KVCAST_LMCACHE_VENV:-$here/../lmcache-venv}}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.13.0 "numpy<=2.2.6" numba
"${pip[@]}" --no-deps lmcache==0.5.6
"${pip[@]}" transformers pyyaml msgspec nvtx prometheus_client psutil sortedcontainers \
  safetensors cachetools requests aiofiles aiofile blake3 aiohttp httpx pyzmq redis py-cpuinfo
"$venv/bin/python" - <<'PY'
import lmcache
from lmcache.storage_backend.serde.cachegen_encoder import CacheGenSerializer  # noqa: F401
print("lmcache", getattr(lmcache, "__version__", "0.5.6"), "ready")
PY
echo "LMCache venv: $venv (use: kvcast bench codec --lmcache-python $venv/bin/python)"

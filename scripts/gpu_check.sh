#!/usr/bin/env bash
# kvcast GPU check: the GPU decoder's tests and benchmark in one go (about 5 minutes, at most
# 10, on one GPU), ending with the table of issue 8 (docs/gpu.md).
#
#   bash scripts/gpu_check.sh [OUT_DIR]          (default: out/gpu_check)
#
# Python: $KVCAST_GPU_PYTHON if set; else a venv under out/gpu-venv made on first use with
# --system-site-packages, so the machine's own CUDA build of PyTorch (and the Triton that comes
# with it) is used, with kvcast installed into it editable and without dependencies. Modules the
# decoder needs that the machine lacks (zstandard, say) are installed from ./.whl when that
# folder holds wheels (machines without network; docs/gpu.md says how to fill it), else from PyPI.
#
# Steps: GPU facts; pytest tests/codec/test_gpu_*.py (golden vectors, kernels on the GPU, timing);
# the golden check with several tile sizes and damaged streams; the benchmark on SYNTHETIC
# Llama-3.1-8B-shaped 1,500-token chunks (CUDA events, fresh inputs) at the default level, with
# a tile-size sweep and format variants (128- and 64-token blocks, 32 lanes: more parallelism);
# `kvcast bench codec --device cuda` (through `python -m kvcast.cli.codec`, which needs
# only the codec's modules) on two such chunks (CPU encode, GPU decode checked bit for
# bit against the CPU decoder, timed with time_decode); then, in the time left, at every ladder
# level. Everything lands in OUT_DIR; the exit code is
# non-zero if any test fails or any GPU output differs from the CPU decoder's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
log() { echo "[gpu_check +$(($(date +%s) - T0))s] $*"; }
fail=0

PY=${KVCAST_GPU_PYTHON:-}
if [ -z "$PY" ]; then
  if [ ! -x out/gpu-venv/bin/python ]; then
    log "creating out/gpu-venv on top of $(command -v python3) (its CUDA torch and triton)"
    python3 -m venv --without-pip --system-site-packages out/gpu-venv || exit 2
    # python3 may itself be a venv, whose packages --system-site-packages does not reach: a .pth
    # file adds its site-packages (and their .pth files) after the venv's own
    site_dir=$(out/gpu-venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    python3 -c "import site; print('import site; ' + '; '.join(f'site.addsitedir({d!r})' for d in site.getsitepackages()))" >"$site_dir/_kvcast_parent.pth"
  fi
  PY=out/gpu-venv/bin/python
fi

for mod in torch triton; do
  "$PY" -c "import $mod" 2>/dev/null || {
    log "$PY cannot import $mod: run this on a machine with a CUDA build of PyTorch (and Triton)"
    log "or point KVCAST_GPU_PYTHON at such a Python"
    exit 3
  }
done
# other modules the decoder path imports -> pip names (small, pure or manylinux wheels)
declare -A PIP=([numpy]=numpy [numba]=numba [safetensors]=safetensors [yaml]=pyyaml
  [zstandard]=zstandard [pytest]=pytest)
missing=()
for mod in "${!PIP[@]}"; do
  "$PY" -c "import $mod" 2>/dev/null || missing+=("${PIP[$mod]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    log "installing ${missing[*]} from ./.whl"
    "$PY" -m pip install -q --no-index --find-links .whl "${missing[@]}" || exit 2
  else
    log "installing ${missing[*]} from PyPI"
    "$PY" -m pip install -q "${missing[@]}" || exit 2
  fi
fi
if ! "$PY" -c "import kvcast.codec.gpu" 2>/dev/null; then
  log "installing kvcast (editable, no dependencies)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || exit 2
fi

log "GPU"
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee "$OUT/nvidia-smi.txt"
"$PY" - <<'EOF' | tee "$OUT/device.txt"
import sys, torch
import triton
import kvcast.codec.gpu as g
ok, why = g.available()
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}; "
      f"GPU decoder: {'ready on ' + why if ok else 'NOT available: ' + why}")
sys.exit(0 if ok else 3)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "no usable GPU: stopping"; exit 3; }

log "tests (tests/codec/test_gpu_golden.py tests/codec/test_gpu_kernel.py)"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/codec/test_gpu_golden.py tests/codec/test_gpu_kernel.py \
  2>&1 | tee "$OUT/pytest.log" | tail -n 15
[ "${PIPESTATUS[0]}" -eq 0 ] || { fail=1; log "TESTS FAILED (see $OUT/pytest.log)"; }

log "golden vectors on the GPU: tiles 16, 32, 64 and 1024 lanes, codec hook, damaged streams"
timeout 120 "$PY" -m kvcast.cli.gpu_check --golden tests/golden --device cuda \
  --tiles 32,16,64,1024 --hook --json "$OUT/check.json" 2>&1 | tee "$OUT/check.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { fail=1; log "GOLDEN CHECK FAILED"; }

log "benchmark: SYNTHETIC Llama-3.1-8B-shaped 1,500-token chunks, default level (cachegen-q1) and qw-mid (SYNTHETIC key gains) (+ tile sweep, format variants)"
timeout 300 "$PY" -m kvcast.cli.gpu_bench --levels cachegen-q1,qw-mid --tokens 1500 --chunks 2 --repeats 10 \
  --tile-lanes 32,16,64,128 --variants b128,b64,l32 --json "$OUT/bench.json" 2>"$OUT/bench.log" |
  tee "$OUT/table.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { fail=1; log "BENCHMARK FAILED or GPU != CPU (see $OUT/bench.log)"; }

log "kvcast bench codec --device cuda: SYNTHETIC Llama-3.1-8B-shaped KV, 2 chunks of 1,500 tokens"
"$PY" - "$OUT/synthetic-llama8b.safetensors" <<'EOF' 2>&1 | tee "$OUT/bench_codec.log"
import sys, torch
from kvcast.profiling import gpu_bench as bench
from kvcast.kv.sources import synthetic
from kvcast.kv.sources.safetensors_io import save_kv
name, shape = synthetic.parse_shape("Llama-3.1-8B")
gen = synthetic.SyntheticGenerator(bench.load_fit(), shape, name=name, seed=0, dtype=torch.float16)
print("wrote", save_kv(next(gen.chunks(3000, 3000)), sys.argv[1]))
EOF
timeout 150 "$PY" -m kvcast.cli.codec bench codec --kv "$OUT/synthetic-llama8b.safetensors" --tokens 3000 \
  --chunk-tokens 1500 --levels cachegen-q1,int8 --no-lmcache --repeats 1 --device cuda \
  --json "$OUT/bench_codec.json" 2>>"$OUT/bench_codec.log" | tee "$OUT/table_codec.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { fail=1; log "BENCH CODEC --device cuda FAILED (see $OUT/bench_codec.log)"; }
rm -f "$OUT/synthetic-llama8b.safetensors"

left=$((570 - ($(date +%s) - T0)))
if [ $left -gt 60 ]; then
  log "benchmark: every ladder level (${left} s left)"
  timeout $left "$PY" -m kvcast.cli.gpu_bench --levels ladder --tokens 1500 --chunks 2 \
    --repeats 10 --json "$OUT/bench_ladder.json" 2>"$OUT/bench_ladder.log" | tee "$OUT/table_ladder.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { fail=1; log "LADDER BENCHMARK FAILED or timed out (see $OUT/bench_ladder.log)"; }
else
  log "skipping the ladder benchmark: ${left} s left of the 10 minutes"
fi

log "done in $(($(date +%s) - T0)) s; results in $OUT (bench*.json, table*.txt, check.json, pytest.log)"
if [ -s "$OUT/table.txt" ]; then
  echo
  cat "$OUT/table.txt"
fi
[ $fail -eq 0 ] && log "ALL GPU CHECKS PASSED" || log "SOME GPU CHECKS FAILED"
exit $fail

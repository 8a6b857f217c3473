"""Save a `KVCache` to a safetensors file with its metadata, and load it back checked.

File layout (``"format": "kvcast-kv"``, ``"version": "1"`` in the safetensors header):
tensor ``kv`` ``[L, 2, T, H, D]``; tensor ``token_ids`` (int64, absent for synthetic caches);
tensor ``key_gains`` (float32 ``[L, H * D]``, optional: `KVCache.key_gains`);
header key ``meta``: the `KVMeta` fields except ``token_ids``, as JSON. safetensors needs no
pickle, and every field is checked against the tensor on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kvcast.errors import InputError
from kvcast.key_gains import check_key_gains
from kvcast.kv.cache import KVCache, KVMeta, check_layout

FORMAT = "kvcast-kv"
VERSION = "1"
_META_FIELDS = ("model_id", "source", "dtype", "n_layers", "n_kv_heads", "head_dim", "synthetic")


def save_kv(cache: KVCache, path: str | Path) -> Path:
    """Write `cache` to `path` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {name: getattr(cache.meta, name) for name in _META_FIELDS}
    meta["extra"] = dict(cache.meta.extra)
    tensors = {"kv": cache.kv.contiguous()}
    if cache.meta.token_ids:
        tensors["token_ids"] = torch.tensor(cache.meta.token_ids, dtype=torch.int64)
    if cache.key_gains is not None:
        tensors["key_gains"] = torch.from_numpy(cache.key_gains.copy())
    header = {"format": FORMAT, "version": VERSION, "meta": json.dumps(meta, sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def read_header(path: str | Path) -> dict:
    """The parsed kvcast metadata of a KV file, without reading its tensors."""
    path = Path(path)
    with _open(path) as f:
        return _parse_meta(path, f.metadata())


def load_kv(path: str | Path) -> KVCache:
    """Load a cache written by `save_kv`; raises `InputError` naming `path` if anything is off."""
    path = Path(path)
    with _open(path) as f:
        meta = _parse_meta(path, f.metadata())
        keys = set(f.keys())
        if "kv" not in keys:
            raise InputError(f"{path}: no 'kv' tensor in this kvcast KV file")
        try:
            kv = f.get_tensor("kv")
            ids = f.get_tensor("token_ids").tolist() if "token_ids" in keys else []
            gains = f.get_tensor("key_gains") if "key_gains" in keys else None
        except (SafetensorError, RuntimeError, ValueError) as exc:
            raise InputError(f"{path}: damaged KV file ({exc})") from exc
    extra = meta.pop("extra")
    kv_meta = KVMeta(**meta, token_ids=ids, extra=extra)
    check_layout(kv, kv_meta, what=str(path))
    check_finite(kv, str(path))
    if gains is not None:
        if gains.dtype != torch.float32:
            raise InputError(f"{path}: tensor key_gains is {gains.dtype}, expected float32")
        channels = kv_meta.n_kv_heads * kv_meta.head_dim
        gains = check_key_gains(gains.numpy(), kv_meta.n_layers, channels, what=str(path))
    if not kv_meta.synthetic and not ids:
        raise InputError(f"{path}: a cache of a real model must carry its token ids")
    return KVCache(kv=kv, meta=kv_meta, key_gains=gains)


def check_finite(kv: torch.Tensor, what: str) -> None:
    """InputError naming the first NaN or infinity (layer by layer: no full-size mask)."""
    for layer in range(kv.shape[0]):
        finite = torch.isfinite(kv[layer])
        if not bool(finite.all()):
            index = [layer, *(int(i) for i in (~finite).nonzero()[0])]
            value = kv[tuple(index)].item()
            raise InputError(
                f"{what}: the KV tensor holds {value} at [layer, K/V, token, head, dim] = "
                f"{index}; expected finite values"
            )


def _open(path: Path):  # type: ignore[no-untyped-def]
    if not path.is_file():
        raise InputError(f"{path}: no such KV file")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a safetensors file ({exc})") from exc


def _parse_meta(path: Path, header: dict[str, str] | None) -> dict:
    header = header or {}
    if header.get("format") != FORMAT:
        raise InputError(
            f"{path}: a safetensors file, but not a kvcast KV cache "
            f"(header 'format' is {header.get('format')!r}, expected {FORMAT!r})"
        )
    if header.get("version") != VERSION:
        raise InputError(
            f"{path}: kvcast KV file version {header.get('version')!r}; this kvcast reads {VERSION!r}"
        )
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: header 'meta' is missing or not JSON ({exc})") from exc
    expected = {*_META_FIELDS, "extra"}
    if not isinstance(meta, dict) or set(meta) != expected:
        got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{path}: header 'meta' has fields {got}; expected {sorted(expected)}")
    types = {"model_id": str, "source": str, "dtype": str, "synthetic": bool, "extra": dict}
    for name in expected:
        want = types.get(name, int)
        if not isinstance(meta[name], want) or (want is int and isinstance(meta[name], bool)):
            raise InputError(
                f"{path}: meta field {name!r} is {meta[name]!r}; expected {want.__name__}"
            )
    if not all(isinstance(v, str) for v in meta["extra"].values()):
        raise InputError(f"{path}: meta field 'extra' must map names to strings")
    return meta

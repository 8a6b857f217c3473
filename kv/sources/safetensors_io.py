"""Save a `KVCache` to a safetensors file with its metadata, and load it back checked; or
stream one token range at a time (`KVReader`, `KVWriter`) so no cache has to fit in memory.

File layout (``"format": "kvcast-kv"``, ``"version": "1"`` in the safetensors header):
tensor ``kv`` ``[L, 2, T, H, D]``; tensor ``token_ids`` (int64, absent for synthetic caches);
tensor ``key_gains`` (float32 ``[L, H * D]``, optional: `KVCache.key_gains`);
header key ``meta``: the `KVMeta` fields except ``token_ids``, as JSON. safetensors needs no
pickle, and every field is checked against the tensor on load.

Streaming: the ``kv`` tensor is row-major ``[L, 2, T, H, D]``, so tokens ``t0:t1`` are ``L * 2``
contiguous runs of ``(t1 - t0) * H * D`` elements. `KVReader.read` reads those runs with plain
file reads (no memory map: pages of a mapped 30 GB file would count in the process's resident
set); `KVWriter` writes the same safetensors header `save_kv` writes (8-byte little-endian header
length, JSON header padded with spaces to 8 bytes, small tensors first, ``kv`` last) and fills
the ``kv`` region by token range, under a temporary name renamed at the end.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kvcast.errors import InputError
from kvcast.key_gains import check_key_gains
from kvcast.kv.cache import KVCache, KVMeta, check_layout

FORMAT = "kvcast-kv"
VERSION = "1"
_META_FIELDS = ("model_id", "source", "dtype", "n_layers", "n_kv_heads", "head_dim", "synthetic")
# dtypes a KV tensor can be streamed in: name -> (safetensors dtype, torch dtype, numpy storage)
_STREAM_DTYPES = {
    "float16": ("F16", torch.float16, np.float16),
    "bfloat16": ("BF16", torch.bfloat16, np.int16),  # numpy has no bfloat16: raw bits
    "float32": ("F32", torch.float32, np.float32),
}
_ST_TO_NAME = {st: name for name, (st, _, _) in _STREAM_DTYPES.items()}
# elements of a read / written block in `iter_chunks` and the writers of large caches
STREAM_BLOCK_ELEMENTS = 1 << 26


def save_kv(cache: KVCache, path: str | Path) -> Path:
    """Write `cache` to `path` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"kv": cache.kv.contiguous()}
    if cache.meta.token_ids:
        tensors["token_ids"] = torch.tensor(cache.meta.token_ids, dtype=torch.int64)
    if cache.key_gains is not None:
        tensors["key_gains"] = torch.from_numpy(cache.key_gains.copy())
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=_file_metadata(cache.meta))
    tmp.replace(path)
    return path


def _file_metadata(meta: KVMeta) -> dict[str, str]:
    fields = {name: getattr(meta, name) for name in _META_FIELDS}
    fields["extra"] = dict(meta.extra)
    return {"format": FORMAT, "version": VERSION, "meta": json.dumps(fields, sort_keys=True)}


def read_header(path: str | Path) -> dict:
    """The parsed kvcast metadata of a KV file, without reading its tensors."""
    path = Path(path)
    header, _ = _read_st_header(path)
    return _parse_meta(path, header.get("__metadata__"))


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
    gains = _check_gains(path, kv_meta, gains)
    return KVCache(kv=kv, meta=kv_meta, key_gains=gains)


def _check_gains(path: Path, meta: KVMeta, gains: torch.Tensor | None) -> np.ndarray | None:
    if gains is not None:
        if gains.dtype != torch.float32:
            raise InputError(f"{path}: tensor key_gains is {gains.dtype}, expected float32")
        channels = meta.n_kv_heads * meta.head_dim
        gains = check_key_gains(gains.numpy(), meta.n_layers, channels, what=str(path))
    if not meta.synthetic and not meta.token_ids:
        raise InputError(f"{path}: a cache of a real model must carry its token ids")
    return gains


def check_finite(kv: torch.Tensor, what: str, *, token_offset: int = 0) -> None:
    """InputError naming the first NaN or infinity (layer by layer: no full-size mask).

    `kv` may be a token range of a larger cache starting at token `token_offset`: the index
    named is then the cache's."""
    for layer in range(kv.shape[0]):
        finite = torch.isfinite(kv[layer])
        if not bool(finite.all()):
            index = [layer, *(int(i) for i in (~finite).nonzero()[0])]
            value = kv[tuple(index)].item()
            index[2] += token_offset
            raise InputError(
                f"{what}: the KV tensor holds {value} at [layer, K/V, token, head, dim] = "
                f"{index}; expected finite values"
            )


class KVReader:
    """A kvcast KV file opened for reading token ranges; the KV tensor is never read whole.

    Checks everything `load_kv` checks except finiteness, which `read` checks per range::

        with KVReader(path) as r:
            r.meta, r.n_tokens, r.key_gains, r.shape
            part = r.read(t0, t1)           # torch tensor [L, 2, t1 - t0, H, D], the file's dtype
            for t0, part in r.iter_chunks(): ...
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path = Path(path)
        # the header is parsed here, not by safe_open: safe_open maps the whole file, which
        # fails (or fills the resident set) for a cache larger than the machine's memory
        header, data_start = _read_st_header(path)
        meta = _parse_meta(path, header.get("__metadata__"))
        if "kv" not in header:
            raise InputError(f"{path}: no 'kv' tensor in this kvcast KV file")
        shape, st_dtype = tuple(header["kv"]["shape"]), header["kv"]["dtype"]
        ids = _read_small(path, header, data_start, "token_ids")
        gains = _read_small(path, header, data_start, "key_gains")
        ids = ids.tolist() if ids is not None else []
        extra = meta.pop("extra")
        self.meta = KVMeta(**meta, token_ids=ids, extra=extra)
        if st_dtype not in _ST_TO_NAME:
            raise InputError(f"{path}: KV tensor dtype {st_dtype}; expected one of F16, BF16, F32")
        name = _ST_TO_NAME[st_dtype]
        _, self.dtype, self._np_dtype = _STREAM_DTYPES[name]
        check_layout(torch.empty(shape, dtype=self.dtype, device="meta"), self.meta, what=str(path))
        self.key_gains = _check_gains(path, self.meta, gains)
        self.shape: tuple[int, ...] = shape
        self._offset = data_start + header["kv"]["data_offsets"][0]
        self._file = None

    @property
    def n_tokens(self) -> int:
        return int(self.shape[2])

    @property
    def element_size(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.element_size

    def read(self, t0: int, t1: int, *, check: bool = True) -> torch.Tensor:
        """Tokens ``t0:t1`` as a tensor [L, 2, t1 - t0, H, D] (NaN / inf refused if `check`)."""
        L, _, T, H, D = self.shape
        if not 0 <= t0 < t1 <= T:
            raise InputError(f"{self.path}: token range {t0}:{t1} is outside 0:{T}")
        n, row = t1 - t0, H * D * self.element_size
        out = np.empty((L * 2, n * H * D), dtype=self._np_dtype)
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        for b in range(L * 2):
            view = memoryview(out[b]).cast("B")
            self._file.seek(self._offset + (b * T + t0) * row)
            got = 0
            while got < len(view):
                k = self._file.readinto(view[got:])
                if not k:
                    raise InputError(f"{self.path}: the file ends inside the KV tensor (truncated)")
                got += k
        kv = torch.from_numpy(out)
        if self.dtype == torch.bfloat16:
            kv = kv.view(torch.bfloat16)
        kv = kv.view(L, 2, n, H, D)
        if check:
            check_finite(kv, str(self.path), token_offset=t0)
        return kv

    def chunk_tokens(self, max_elements: int = STREAM_BLOCK_ELEMENTS) -> int:
        """Tokens per range so that one range holds at most `max_elements` (at least 1)."""
        per_token = int(np.prod(self.shape)) // max(1, self.n_tokens)
        return max(1, min(self.n_tokens, max_elements // max(1, per_token)))

    def iter_chunks(self, chunk_tokens: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(first token, tensor) of consecutive token ranges covering the cache."""
        step = chunk_tokens or self.chunk_tokens()
        for t0 in range(0, self.n_tokens, step):
            yield t0, self.read(t0, min(self.n_tokens, t0 + step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> KVReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KVWriter:
    """Writes a kvcast KV file of known shape token range by token range (`load_kv` reads it).

    ::

        with KVWriter(path, meta, n_tokens, key_gains=None) as w:
            w.write(t0, part)       # part [L, 2, t, H, D] of meta.dtype; any order, each token once
        # on leaving the block the file is complete and renamed into place; on an error the
        # temporary file is removed and `path` is left as it was
    """

    def __init__(
        self,
        path: str | Path,
        meta: KVMeta,
        n_tokens: int,
        *,
        key_gains: np.ndarray | None = None,
    ) -> None:
        self.path = path = Path(path)
        if meta.dtype not in _STREAM_DTYPES:
            raise InputError(
                f"{path}: KV dtype {meta.dtype!r} cannot be streamed; expected one of "
                f"{', '.join(_STREAM_DTYPES)}"
            )
        if n_tokens <= 0:
            raise InputError(f"{path}: a KV file needs at least one token, got {n_tokens}")
        st_dtype, self.dtype, np_dtype = _STREAM_DTYPES[meta.dtype]
        self.shape = (meta.n_layers, 2, n_tokens, meta.n_kv_heads, meta.head_dim)
        check_layout(torch.empty(self.shape, dtype=self.dtype, device="meta"), meta, what=str(path))
        if key_gains is not None:
            channels = meta.n_kv_heads * meta.head_dim
            key_gains = check_key_gains(key_gains, meta.n_layers, channels, what=str(path))
        _check_gains(path, meta, None)  # a real model's cache carries token ids
        blobs: list[tuple[str, str, list[int], bytes]] = []  # save_file's order: widest first
        if meta.token_ids:
            ids = np.asarray(meta.token_ids, dtype="<i8")
            blobs.append(("token_ids", "I64", [len(ids)], ids.tobytes()))
        if key_gains is not None:
            g = np.ascontiguousarray(key_gains, dtype="<f4")
            blobs.append(("key_gains", "F32", list(g.shape), g.tobytes()))
        self._itemsize = np.dtype(np_dtype).itemsize
        kv_bytes = int(np.prod(self.shape)) * self._itemsize
        header: dict[str, object] = {"__metadata__": _file_metadata(meta)}
        pos = 0
        for name, dt, shape, data in blobs:
            header[name] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + len(data)]}
            pos += len(data)
        header["kv"] = {"dtype": st_dtype, "shape": list(self.shape),
                        "data_offsets": [pos, pos + kv_bytes]}  # fmt: skip
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)
        self._offset = 8 + len(text) + pos
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(path.name + ".tmp")
        self._written = np.zeros(n_tokens, dtype=bool)
        self._file = open(self._tmp, "wb", buffering=0)  # noqa: SIM115 (closed by close/abort)
        try:
            self._file.write(struct.pack("<Q", len(text)) + text)
            for *_, data in blobs:
                self._file.write(data)
            self._file.truncate(self._offset + kv_bytes)  # sparse until filled
        except BaseException:
            self.abort()
            raise

    @property
    def n_tokens(self) -> int:
        return self.shape[2]

    def write(self, t0: int, kv: torch.Tensor) -> None:
        """Store `kv` [L, 2, t, H, D] (the file's dtype) as tokens ``t0:t0 + t``."""
        L, _, T, H, D = self.shape
        if self._file is None:
            raise InputError(f"{self.path}: the writer is closed")
        if kv.dim() != 5 or (kv.shape[0], kv.shape[1], kv.shape[3], kv.shape[4]) != (L, 2, H, D):
            raise InputError(
                f"{self.path}: a part of shape {tuple(kv.shape)} does not fit [L, 2, t, H, D] = "
                f"[{L}, 2, t, {H}, {D}]"
            )
        if kv.dtype != self.dtype:
            raise InputError(
                f"{self.path}: a part of dtype {kv.dtype}; the file holds {self.dtype}"
            )
        n = int(kv.shape[2])
        if not 0 <= t0 < t0 + n <= T:
            raise InputError(f"{self.path}: token range {t0}:{t0 + n} is outside 0:{T}")
        if self._written[t0 : t0 + n].any():
            raise InputError(f"{self.path}: tokens {t0}:{t0 + n} overlap tokens already written")
        src = kv.detach().to("cpu").contiguous()
        if self.dtype == torch.bfloat16:
            src = src.view(torch.int16)
        arr = src.numpy().reshape(L * 2, n * H * D)
        row = H * D * self._itemsize
        for b in range(L * 2):
            view = memoryview(arr[b]).cast("B")
            done = 0
            while done < len(view):
                done += os.pwrite(self._file.fileno(), view[done:],
                                  self._offset + (b * T + t0) * row + done)  # fmt: skip
        self._written[t0 : t0 + n] = True

    def close(self) -> Path:
        """Finish: every token must have been written; renames the file into place."""
        if self._file is None:
            return self.path
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise InputError(
                f"{self.path}: {missing.size} of {self.n_tokens} tokens never written "
                f"(first: token {int(missing[0])}); nothing saved"
            )
        self._file.close()
        self._file = None
        self._tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file; `path` keeps whatever it held before."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> KVWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# safetensors dtypes: name -> (bytes per element, torch dtype for reading small tensors)
_ST_DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    "BOOL": (1, torch.bool), "U8": (1, torch.uint8), "I8": (1, torch.int8),
    "F8_E5M2": (1, None), "F8_E4M3": (1, None), "I16": (2, torch.int16), "U16": (2, None),
    "F16": (2, torch.float16), "BF16": (2, torch.bfloat16), "I32": (4, torch.int32),
    "U32": (4, None), "F32": (4, torch.float32), "F64": (8, torch.float64),
    "I64": (8, torch.int64), "U64": (8, None),
}  # fmt: skip
_MAX_HEADER = 100_000_000  # safetensors' own limit


def _read_st_header(path: Path) -> tuple[dict, int]:
    """The checked safetensors header of `path` and the offset of its data region, read
    without mapping the file; InputError naming `path` for anything safe_open would refuse."""
    if not path.is_file():
        raise InputError(f"{path}: no such KV file")
    size = path.stat().st_size

    def bad(why: str) -> InputError:
        return InputError(f"{path}: not a safetensors file ({why})")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise bad(f"header length {n} does not fit the file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise bad("__metadata__ must map names to strings")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (
                dtype in _ST_DTYPES
                and isinstance(shape, list)
                and all(type(d) is int and d >= 0 for d in shape)
                and type(begin) is int
                and type(end) is int
                and 0 <= begin <= end
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise bad(f"tensor {name!r}: {exc!r}") from exc
        if not ok or end - begin != int(np.prod(shape, dtype=object)) * _ST_DTYPES[dtype][0]:
            raise bad(f"tensor {name!r}: dtype, shape and data_offsets do not agree")
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise bad(f"tensor {name!r}: data_offsets leave a gap or overlap")
        pos = end
    if 8 + n + pos != size:
        raise bad(f"the tensors take {pos} bytes, the file holds {size - 8 - n} after the header")
    return header, 8 + n


def _read_small(path: Path, header: dict, data_start: int, name: str) -> torch.Tensor | None:
    """A small tensor (token ids, key gains) of a checked header, read from the file."""
    if name not in header:
        return None
    info = header[name]
    _, dtype = _ST_DTYPES[info["dtype"]]
    if dtype is None:
        raise InputError(f"{path}: tensor {name} has dtype {info['dtype']}, which kvcast reads not")
    begin, end = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        data = bytearray(f.read(end - begin))
    if len(data) != end - begin:
        raise InputError(f"{path}: the file ends inside tensor {name} (truncated)")
    if not data:
        return torch.empty(info["shape"], dtype=dtype)
    return torch.frombuffer(data, dtype=dtype).reshape(info["shape"])


def _open(path: Path):  # type: ignore[no-untyped-def]
    if not path.is_file():
        raise InputError(f"{path}: no such KV file")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
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

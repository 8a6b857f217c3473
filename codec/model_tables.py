"""Model tables: offline per-(layer, K/V, channel) symbol statistics of one model.

The paper profiles the symbol distributions once per model and reuses them for every context,
so no probability table travels with a chunk. Model tables hold, per quantization
signature (bins per layer, anchor/delta settings), the symbol counts of every table of
`entropy_tables.TableLayout`, fitted from real KV chunks. Its id (16 bytes of a SHA-256 over
its content) is written into every chunk coded with it; decoding with another profile fails.

File: safetensors (no pickle). Tensors `counts/<signature>` (uint32), and where the profile
holds the model's KLT bases (`kvcast.codec.transforms`, for levels with `transform: klt`)
`transform/enc` (float32 [L, 2, C, C]), `transform/dec` (int16) and `transform/dec_scale`
(float32 [L, 2, C]); metadata key `kvcast_model_profile` holds a JSON header (format, version,
model shape, prob_bits, signatures with their levels and parameters, and `transforms`). Not to be confused with the *codec profile*
(issue 4), which records sizes, quality and speed per level.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from kvcast.codec.entropy import build_tables
from kvcast.codec.entropy_tables import TableLayout, count_symbols, freqs_from_counts
from kvcast.codec.ladder import Ladder, LevelSpec
from kvcast.codec.quantize import quantize
from kvcast.codec.transforms import Transforms
from kvcast.errors import InputError

FORMAT = "kvcast-model-profile"
VERSION = 1


class ModelTablesMismatch(InputError):
    """A chunk, a level or a KV tensor does not match the model tables given."""


def signature(spec: LevelSpec, n_layers: int) -> str:
    """Hex id of what determines the symbol statistics: bins per layer, anchor settings and
    (where there is one) the transform."""
    bins = spec.bins(n_layers)
    key = {
        "bins": bins.tolist(),
        "groups": list(spec.groups),
        "anchor_bins": spec.anchor_bins if spec.delta else 0,
    }
    if spec.transform != "none":
        key["transform"] = spec.transform
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ModelTables:
    model_id: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    prob_bits: int
    counts: dict[str, np.ndarray]  # signature -> counts (int64, layout order)
    meta: dict[str, dict] = field(default_factory=dict)  # signature -> {levels, bins, group, ...}
    provenance: dict[str, str] = field(default_factory=dict)
    transforms: Transforms | None = None  # the model's KLT bases (levels with transform: klt)
    _tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False
    )

    @property
    def channels(self) -> int:
        return self.n_kv_heads * self.head_dim

    def header(self) -> dict:
        head = {
            "format": FORMAT,
            "version": VERSION,
            "model": {
                "id": self.model_id,
                "n_layers": self.n_layers,
                "n_kv_heads": self.n_kv_heads,
                "head_dim": self.head_dim,
            },
            "prob_bits": self.prob_bits,
            "signatures": {k: self.meta[k] for k in sorted(self.counts)},
        }
        if self.transforms is not None:  # absent otherwise: older profiles keep their ids
            head["transforms"] = {"kind": "klt", "key_gains": self.transforms.key_gains}
        return head

    @property
    def id(self) -> bytes:
        """16-byte content hash: canonical JSON header (without provenance) + every count."""
        h = hashlib.sha256(json.dumps(self.header(), sort_keys=True).encode())
        for key in sorted(self.counts):
            h.update(key.encode())
            h.update(np.ascontiguousarray(self.counts[key], dtype="<u4").tobytes())
        for name, arr in self._transform_tensors().items():
            h.update(name.encode())
            h.update(arr.tobytes())
        return h.digest()[:16]

    def _transform_tensors(self) -> dict[str, np.ndarray]:
        tr = self.transforms
        if tr is None:
            return {}
        return {
            "transform/enc": np.ascontiguousarray(tr.enc, dtype="<f4"),
            "transform/dec": np.ascontiguousarray(tr.dec, dtype="<i2"),
            "transform/dec_scale": np.ascontiguousarray(tr.dec_scale, dtype="<f4"),
        }

    def transforms_for(self, level: str) -> Transforms:
        """The KLT bases a `transform: klt` level needs; ModelTablesMismatch if there are none."""
        if self.transforms is None:
            raise ModelTablesMismatch(
                f"level {level!r} quantizes in the model's KLT bases, but model tables "
                f"{self.id_hex} ({self.model_id}) has none; fit one with "
                "`kvcast codec fit-tables --transforms`"
            )
        return self.transforms

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def check_shape(self, n_layers: int, n_kv_heads: int, head_dim: int, what: str = "KV") -> None:
        if (n_layers, n_kv_heads, head_dim) != (self.n_layers, self.n_kv_heads, self.head_dim):
            raise ModelTablesMismatch(
                f"{what} has layers/kv_heads/head_dim {(n_layers, n_kv_heads, head_dim)}, but model tables "
                f"{self.id_hex} ({self.model_id}) was fitted for {(self.n_layers, self.n_kv_heads, self.head_dim)}"
            )

    def tables_for(self, spec: LevelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cum, start, sizes) of the level's tables, derived from the counts (cached)."""
        if spec.prob_bits != self.prob_bits:
            raise ModelTablesMismatch(
                f"level {spec.name!r} uses prob_bits={spec.prob_bits}, model tables {self.id_hex} have {self.prob_bits}"
            )
        sig = signature(spec, self.n_layers)
        if sig not in self.counts:
            raise ModelTablesMismatch(
                f"model tables {self.id_hex} ({self.model_id}) has no tables for level {spec.name!r} "
                f"(signature {sig}); refit it with this level (kvcast codec fit-tables)"
            )
        if sig not in self._tables:
            layout = self.layout(spec)
            sizes = layout.sizes()
            freqs = freqs_from_counts(self.counts[sig], sizes, self.prob_bits)
            cum, start = build_tables(freqs, sizes)
            self._tables[sig] = (cum, start, sizes)
        return self._tables[sig]

    def layout(self, spec: LevelSpec) -> TableLayout:
        return TableLayout(
            spec.bins(self.n_layers),
            self.channels,
            spec.groups,
            spec.anchor_bins if spec.delta else 0,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"counts/{k}": np.ascontiguousarray(v, dtype=np.uint32) for k, v in self.counts.items()
        }
        tensors.update(self._transform_tensors())
        head = self.header()
        head["provenance"] = self.provenance
        head["id"] = self.id_hex
        safetensors.numpy.save_file(
            tensors, str(path), metadata={"kvcast_model_profile": json.dumps(head)}
        )
        return path


def fit_model_tables(
    chunks: list[np.ndarray],
    levels: list[LevelSpec],
    *,
    model_id: str,
    provenance: dict[str, str] | None = None,
    transforms: Transforms | None = None,
) -> ModelTables:
    """Fit counts for every level from real KV chunks, each float32 [L, 2, T, H, D].

    `transforms`: the model's KLT bases (`kvcast.codec.transforms.fit_klt`), stored in the
    profile; levels with `transform: klt` are counted in those coordinates and need them.
    """
    if not chunks:
        raise InputError("fit_model_tables: no KV chunks given")
    shape = chunks[0].shape
    if len(shape) != 5 or shape[1] != 2:
        raise InputError(f"fit_model_tables: expected KV [L, 2, T, H, D], got {tuple(shape)}")
    n_layers, _, _, n_heads, head_dim = shape
    prob_bits = {lv.prob_bits for lv in levels}
    if len(prob_bits) != 1:
        raise InputError("fit_model_tables: all levels of one profile must share prob_bits")
    prof = ModelTables(
        model_id, n_layers, n_heads, head_dim, prob_bits.pop(), {}, {}, dict(provenance or {}),
        transforms,
    )  # fmt: skip
    if transforms is not None:
        transforms.check()
        if transforms.shape != (n_layers, n_heads * head_dim):
            raise InputError(
                f"fit_model_tables: transforms are for [L, C] = {list(transforms.shape)}, "
                f"the chunks have [{n_layers}, {n_heads * head_dim}]"
            )
    for lv in levels:
        sig = signature(lv, n_layers)
        if sig in prof.counts:
            prof.meta[sig]["levels"] = sorted({*prof.meta[sig]["levels"], lv.name})
            continue
        layout = prof.layout(lv)
        total = np.zeros(int(layout.sizes().sum()), dtype=np.int64)
        for kv in chunks:
            if kv.shape[0] != n_layers or kv.shape[3:] != (n_heads, head_dim) or kv.shape[1] != 2:
                raise InputError(
                    f"fit_model_tables: chunk shape {tuple(kv.shape)} differs from {tuple(shape)}"
                )
            x = np.ascontiguousarray(kv, dtype=np.float32).reshape(n_layers, 2, kv.shape[2], -1)
            if lv.transform != "none":
                x = prof.transforms_for(lv.name).encode(x)
            sym, _ = quantize(x, layout.bins, groups=lv.groups, anchor_bins=lv.anchor_bins)
            total += count_symbols(sym, layout)
        if total.max(initial=0) >= 1 << 32:
            raise InputError("fit_model_tables: counts overflow 32 bits; fit on fewer tokens")
        prof.counts[sig] = total
        prof.meta[sig] = {
            "levels": [lv.name],
            "bins": layout.bins.tolist(),
            "groups": list(lv.groups),
            "anchor_bins": lv.anchor_bins if lv.delta else 0,
            **({"transform": lv.transform} if lv.transform != "none" else {}),
        }
    return prof


def load_model_tables(path: str | Path) -> ModelTables:
    """Read model tables file, checking its header, tensors and id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model tables file not found")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: not a safetensors model tables ({exc})") from exc
    try:
        head = json.loads(meta["kvcast_model_profile"])
        if head["format"] != FORMAT or head["version"] != VERSION:
            raise ValueError(f"format {head.get('format')!r} version {head.get('version')!r}")
        model = head["model"]
        prof = ModelTables(
            model_id=str(model["id"]),
            n_layers=int(model["n_layers"]),
            n_kv_heads=int(model["n_kv_heads"]),
            head_dim=int(model["head_dim"]),
            prob_bits=int(head["prob_bits"]),
            counts={},
            meta=dict(head["signatures"]),
            provenance=dict(head.get("provenance", {})),
        )
        tr_head = head.get("transforms")
        if tr_head is not None:
            tr = Transforms(
                tensors["transform/enc"], tensors["transform/dec"],
                tensors["transform/dec_scale"], bool(tr_head["key_gains"]),
            )  # fmt: skip
            tr.check()
            if tr_head["kind"] != "klt" or tr.shape != (prof.n_layers, prof.channels):
                raise ValueError(f"transforms {tr_head} of shape {list(tr.shape)}")
            prof.transforms = tr
    except (KeyError, ValueError, TypeError, InputError) as exc:
        raise InputError(f"{path}: bad model tables header: {exc}") from exc
    for sig, info in prof.meta.items():
        arr = tensors.get(f"counts/{sig}")
        if arr is None or arr.dtype != np.uint32 or arr.ndim != 1:
            raise InputError(f"{path}: counts/{sig} missing or not a 1-D uint32 tensor")
        bins = np.asarray(info["bins"], dtype=np.int64)
        groups = tuple(int(g) for g in info["groups"])
        layout = TableLayout(bins, prof.channels, groups, int(info["anchor_bins"]))
        if bins.shape != (prof.n_layers, 2) or arr.size != int(layout.sizes().sum()):
            raise InputError(
                f"{path}: counts/{sig} has {arr.size} entries, not what its bins imply"
            )
        prof.counts[sig] = arr.astype(np.int64)
    if head.get("id") and head["id"] != prof.id_hex:
        raise InputError(
            f"{path}: stored id {head['id']} does not match its content ({prof.id_hex})"
        )
    return prof


def levels_needing_tables(ladder: Ladder, *, with_transforms: bool = False) -> list[LevelSpec]:
    """All ladder levels and variants whose tables come from model tables; the KLT levels
    among them only `with_transforms` (a profile fitted without KLT bases cannot hold them)."""
    return [
        lv
        for lv in (*ladder.levels, *ladder.variants)
        if lv.tables == "profile" and (with_transforms or lv.transform == "none")
    ]

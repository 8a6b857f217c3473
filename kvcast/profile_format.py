"""The codec-profile file: what one level of the codec costs, for one model on one device.

A codec profile is the bridge from the codec to the simulator (docs/profile-format.md). It is JSON,
versioned (`"format": "kvcast-codec-profile", "version": 1`), written by `kvcast profile` and read
by the simulator. This module holds the typed form (frozen dataclasses), the loader that resolves
shipped profiles by name from `profiles/`, the writer, and a validator whose errors name the file
and the field, so that a hand-edited or half-written profile fails loudly instead of skewing runs.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvcast.chunks import TEXT_LEVEL
from kvcast.errors import InputError
from kvcast.fields import Checker
from kvcast.reductions import parse_reduction

FORMAT_NAME = "kvcast-codec-profile"
FORMAT_VERSION = 1
LEVEL_KINDS = ("cachegen", "baseline", "reduction")
PAYLOADS = ("kv", "text")

# The repository's profiles/ folder is the package `kvcast.profiles`; shipped profiles are found by name.
PROFILES_DIR = Path(importlib.resources.files("kvcast.profiles"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Distribution:
    """A per-chunk figure over the profiled chunks: summary plus the raw samples (may be empty)."""

    mean: float
    p5: float
    p50: float
    p95: float
    samples: tuple[float, ...] = ()


@dataclass(frozen=True)
class LevelQuality:
    """Answer quality with this level; `normalized` is 1.0 for the uncompressed cache."""

    normalized: float
    perplexity_ratio: float | None = None
    greedy_agreement: float | None = None
    retrieval_accuracy: float | None = None
    per_chunk: tuple[float, ...] = ()


@dataclass(frozen=True)
class RelL2:
    """Relative L2 reconstruction error of K and of V."""

    k: float
    v: float


@dataclass(frozen=True)
class LevelProfile:
    """One level of the ladder (or one baseline) as measured."""

    name: str
    kind: str  # "cachegen" | "baseline"
    bits_per_element: Distribution  # all bytes: payload + side information + container
    quality: LevelQuality
    encode_melem_per_s: float
    decode_melem_per_s: float
    rel_l2_error: RelL2 | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # context reduction (kind "reduction", kvcast.reductions): what is sent, and the share of
    # the context's tokens the receiver's cache (or the pruned text) keeps
    payload: str = "kv"  # "kv" (bits per element of the original chunk) | "text" (token ids)
    tokens_kept: float = 1.0


@dataclass(frozen=True)
class ModelInfo:
    id: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    kv_elements_per_token: int  # = n_layers * 2 * n_kv_heads * head_dim


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # "cpu", "cuda:NVIDIA H200", ...
    cores: int | None = None


@dataclass(frozen=True)
class TextFallback:
    """TEXT: send token ids and recompute; the recomputed KV is exact, so quality is 1.0."""

    quality: float = 1.0


@dataclass(frozen=True)
class PrefillPoint:
    """Prefill throughput of the model on the device for a context of `context_tokens` tokens."""

    context_tokens: int
    tokens_per_s: float


@dataclass(frozen=True)
class Provenance:
    command: str
    date: str
    kvcast_version: str
    contexts: tuple[str, ...] = ()
    notes: str = ""


@dataclass(frozen=True)
class CodecProfile:
    """A whole profile. `levels` is best quality first; `source` is where it was loaded from."""

    model: ModelInfo
    device: DeviceInfo
    chunk_tokens: int
    levels: tuple[LevelProfile, ...]
    text: TextFallback
    prefill: tuple[PrefillPoint, ...]
    provenance: Provenance
    name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def level(self, name: str) -> LevelProfile:
        """The level called `name`; a clear error listing the known ones otherwise."""
        for lv in self.levels:
            if lv.name == name:
                return lv
        known = ", ".join(lv.name for lv in self.levels)
        raise InputError(f"{self.source or 'codec profile'}: no level {name!r} (levels: {known})")

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levels)

    @property
    def ladder(self) -> tuple[str, ...]:
        """The CacheGen levels controllers adapt over, best quality first (no baselines)."""
        return tuple(lv.name for lv in self.levels if lv.kind == "cachegen")


# --------------------------------------------------------------------------- validation helpers


def _distribution(c: Checker, raw: Any, where: str) -> Distribution:
    d = c.mapping(raw, where, ("mean", "p5", "p50", "p95"), ("samples",))
    out = Distribution(
        mean=c.number(d["mean"], f"{where}.mean", positive=True),
        p5=c.number(d["p5"], f"{where}.p5", positive=True),
        p50=c.number(d["p50"], f"{where}.p50", positive=True),
        p95=c.number(d["p95"], f"{where}.p95", positive=True),
        samples=c.numbers(d.get("samples", []), f"{where}.samples", positive=True),
    )
    if not out.p5 <= out.p50 <= out.p95:
        raise c.fail(where, f"expected p5 <= p50 <= p95, got {out.p5}, {out.p50}, {out.p95}")
    return out


def _quality(c: Checker, raw: Any, where: str) -> LevelQuality:
    q = c.mapping(
        raw,
        where,
        ("normalized",),
        ("perplexity_ratio", "greedy_agreement", "retrieval_accuracy", "per_chunk"),
    )
    return LevelQuality(
        normalized=c.number(q["normalized"], f"{where}.normalized", lo=0.0),
        perplexity_ratio=c.optional_number(
            q.get("perplexity_ratio"), f"{where}.perplexity_ratio", positive=True
        ),
        greedy_agreement=c.optional_number(
            q.get("greedy_agreement"), f"{where}.greedy_agreement", lo=0.0, hi=1.0
        ),
        retrieval_accuracy=c.optional_number(
            q.get("retrieval_accuracy"), f"{where}.retrieval_accuracy", lo=0.0, hi=1.0
        ),
        per_chunk=c.numbers(q.get("per_chunk", []), f"{where}.per_chunk", lo=0.0),
    )


def _level(c: Checker, raw: Any, where: str) -> LevelProfile:
    lv = c.mapping(
        raw,
        where,
        ("name", "kind", "bits_per_element", "quality", "encode_melem_per_s", "decode_melem_per_s"),
        ("rel_l2_error", "extra", "payload", "tokens_kept"),
    )
    name = c.string(lv["name"], f"{where}.name")
    if name == TEXT_LEVEL:
        raise c.fail(f"{where}.name", "'TEXT' is reserved for the text fallback (the 'text' field)")
    if ":" in name:
        raise c.fail(f"{where}.name", f"level names may not contain ':', got {name!r}")
    kind = c.string(lv["kind"], f"{where}.kind")
    if kind not in LEVEL_KINDS:
        raise c.fail(f"{where}.kind", f"expected one of {', '.join(LEVEL_KINDS)}, got {kind!r}")
    rel = None
    if lv.get("rel_l2_error") is not None:
        r = c.mapping(lv["rel_l2_error"], f"{where}.rel_l2_error", ("k", "v"))
        rel = RelL2(
            k=c.number(r["k"], f"{where}.rel_l2_error.k", lo=0.0),
            v=c.number(r["v"], f"{where}.rel_l2_error.v", lo=0.0),
        )
    extra = lv.get("extra", {})
    if not isinstance(extra, Mapping):
        raise c.fail(f"{where}.extra", "expected an object")
    for key in ("payload", "tokens_kept"):
        if key in lv and kind != "reduction":
            raise c.fail(f"{where}.{key}", "only a level of kind 'reduction' has it")
    payload = c.string(lv.get("payload", "kv"), f"{where}.payload")
    if payload not in PAYLOADS:
        raise c.fail(f"{where}.payload", f"expected one of {', '.join(PAYLOADS)}, got {payload!r}")
    if kind == "reduction":
        try:
            sends = parse_reduction(name).payload
        except InputError as exc:
            raise c.fail(f"{where}.name", str(exc)) from None
        if sends != payload:
            raise c.fail(
                f"{where}.payload",
                f"level {name!r} sends {sends!r} (docs/reduction.md), not {payload!r}",
            )
    tokens_kept = c.number(lv.get("tokens_kept", 1.0), f"{where}.tokens_kept", positive=True)
    if tokens_kept > 1.0:
        raise c.fail(f"{where}.tokens_kept", f"a share of the context's tokens, got {tokens_kept}")
    quality = _quality(c, lv["quality"], f"{where}.quality")
    bits = _distribution(c, lv["bits_per_element"], f"{where}.bits_per_element")
    if quality.per_chunk and bits.samples and len(quality.per_chunk) != len(bits.samples):
        raise c.fail(
            f"{where}.quality.per_chunk",
            f"has {len(quality.per_chunk)} entries but bits_per_element.samples has "
            f"{len(bits.samples)}; both list the same chunks in the same order",
        )
    return LevelProfile(
        name=name,
        kind=kind,
        bits_per_element=bits,
        quality=quality,
        encode_melem_per_s=c.number(
            lv["encode_melem_per_s"], f"{where}.encode_melem_per_s", positive=True
        ),
        decode_melem_per_s=c.number(
            lv["decode_melem_per_s"], f"{where}.decode_melem_per_s", positive=True
        ),
        rel_l2_error=rel,
        extra=dict(extra),
        payload=payload,
        tokens_kept=tokens_kept,
    )


def profile_from_dict(raw: Any, source: str = "codec profile") -> CodecProfile:
    """Validate a decoded JSON document and build the typed profile (errors name `source`)."""
    c = Checker(source)
    top = c.mapping(
        raw,
        "(top level)",
        (
            "format",
            "version",
            "model",
            "device",
            "chunk_tokens",
            "levels",
            "text",
            "prefill",
            "provenance",
        ),
        ("name", "extra"),
    )
    if top["format"] != FORMAT_NAME:
        raise c.fail("format", f"expected {FORMAT_NAME!r}, got {top['format']!r}")
    if top["version"] != FORMAT_VERSION:
        raise c.fail(
            "version", f"this kvcast reads version {FORMAT_VERSION}, got {top['version']!r}"
        )

    m = c.mapping(
        top["model"], "model", ("id", "n_layers", "n_kv_heads", "head_dim", "kv_elements_per_token")
    )
    model = ModelInfo(
        id=c.string(m["id"], "model.id"),
        n_layers=c.integer(m["n_layers"], "model.n_layers", lo=1),
        n_kv_heads=c.integer(m["n_kv_heads"], "model.n_kv_heads", lo=1),
        head_dim=c.integer(m["head_dim"], "model.head_dim", lo=1),
        kv_elements_per_token=c.integer(
            m["kv_elements_per_token"], "model.kv_elements_per_token", lo=1
        ),
    )
    expect = model.n_layers * 2 * model.n_kv_heads * model.head_dim
    if model.kv_elements_per_token != expect:
        raise c.fail(
            "model.kv_elements_per_token",
            f"expected n_layers*2*n_kv_heads*head_dim = {expect}, got {model.kv_elements_per_token}",
        )

    d = c.mapping(top["device"], "device", ("name",), ("cores",))
    device = DeviceInfo(
        name=c.string(d["name"], "device.name"),
        cores=None if d.get("cores") is None else c.integer(d["cores"], "device.cores", lo=1),
    )

    if (
        not isinstance(top["levels"], Sequence)
        or isinstance(top["levels"], str)
        or not top["levels"]
    ):
        raise c.fail("levels", "expected a non-empty list of levels")
    levels = tuple(_level(c, lv, f"levels[{i}]") for i, lv in enumerate(top["levels"]))
    seen: set[str] = set()
    for i, lv in enumerate(levels):
        if lv.name in seen:
            raise c.fail(f"levels[{i}].name", f"duplicate level name {lv.name!r}")
        seen.add(lv.name)
    cg = [lv for lv in levels if lv.kind == "cachegen"]
    if not cg:
        raise c.fail("levels", "expected at least one level of kind 'cachegen'")
    for prev, nxt in zip(cg, cg[1:], strict=False):
        if nxt.quality.normalized > prev.quality.normalized + 1e-12:
            raise c.fail(
                "levels",
                f"cachegen levels must be listed best quality first: {nxt.name!r} "
                f"({nxt.quality.normalized}) follows {prev.name!r} ({prev.quality.normalized})",
            )

    t = c.mapping(top["text"], "text", (), ("quality",))
    text = TextFallback(quality=c.number(t.get("quality", 1.0), "text.quality", lo=0.0))

    p = top["prefill"]
    p = c.mapping(p, "prefill", ("points",))
    pts_raw = p["points"]
    if not isinstance(pts_raw, Sequence) or isinstance(pts_raw, str) or not pts_raw:
        raise c.fail(
            "prefill.points", "expected a non-empty list of {context_tokens, tokens_per_s}"
        )
    points = []
    for i, pt in enumerate(pts_raw):
        w = f"prefill.points[{i}]"
        pt = c.mapping(pt, w, ("context_tokens", "tokens_per_s"))
        points.append(
            PrefillPoint(
                context_tokens=c.integer(pt["context_tokens"], f"{w}.context_tokens", lo=1),
                tokens_per_s=c.number(pt["tokens_per_s"], f"{w}.tokens_per_s", positive=True),
            )
        )
    for i in range(1, len(points)):
        a, b = points[i - 1], points[i]
        if b.context_tokens <= a.context_tokens:
            raise c.fail(
                f"prefill.points[{i}].context_tokens", "points must be sorted, strictly increasing"
            )
        # The simulator charges prefill(P..P+T) = time(P+T) - time(P), time(n) = n / tokens_per_s(n);
        # a curve where prefilling more tokens takes less time is a measurement error.
        if b.context_tokens / b.tokens_per_s <= a.context_tokens / a.tokens_per_s:
            raise c.fail(
                f"prefill.points[{i}]",
                "prefilling a longer context must take longer (context_tokens / tokens_per_s "
                "must increase from point to point)",
            )

    pv = c.mapping(
        top["provenance"],
        "provenance",
        ("command", "date", "kvcast_version"),
        ("contexts", "notes"),
    )
    ctxs = pv.get("contexts", [])
    if not isinstance(ctxs, Sequence) or isinstance(ctxs, str):
        raise c.fail("provenance.contexts", "expected a list of strings")
    provenance = Provenance(
        command=c.string(pv["command"], "provenance.command"),
        date=c.string(pv["date"], "provenance.date"),
        kvcast_version=c.string(pv["kvcast_version"], "provenance.kvcast_version"),
        contexts=tuple(c.string(x, f"provenance.contexts[{i}]") for i, x in enumerate(ctxs)),
        notes=str(pv.get("notes", "")),
    )
    extra = top.get("extra", {})
    if not isinstance(extra, Mapping):
        raise c.fail("extra", "expected an object")
    return CodecProfile(
        model=model,
        device=device,
        chunk_tokens=c.integer(top["chunk_tokens"], "chunk_tokens", lo=1),
        levels=levels,
        text=text,
        prefill=tuple(points),
        provenance=provenance,
        name=str(top.get("name", "")),
        extra=dict(extra),
        source=source,
    )


def profile_to_dict(profile: CodecProfile) -> dict[str, Any]:
    """The JSON document for `profile` (the inverse of `profile_from_dict`)."""

    def dist(d: Distribution) -> dict[str, Any]:
        return {"mean": d.mean, "p5": d.p5, "p50": d.p50, "p95": d.p95, "samples": list(d.samples)}

    def level(lv: LevelProfile) -> dict[str, Any]:
        q = lv.quality
        out: dict[str, Any] = {
            "name": lv.name,
            "kind": lv.kind,
            "bits_per_element": dist(lv.bits_per_element),
            "quality": {
                "normalized": q.normalized,
                "perplexity_ratio": q.perplexity_ratio,
                "greedy_agreement": q.greedy_agreement,
                "retrieval_accuracy": q.retrieval_accuracy,
                "per_chunk": list(q.per_chunk),
            },
            "encode_melem_per_s": lv.encode_melem_per_s,
            "decode_melem_per_s": lv.decode_melem_per_s,
        }
        out["quality"] = {k: v for k, v in out["quality"].items() if v is not None}
        if lv.rel_l2_error is not None:
            out["rel_l2_error"] = {"k": lv.rel_l2_error.k, "v": lv.rel_l2_error.v}
        if lv.extra:
            out["extra"] = dict(lv.extra)
        if lv.kind == "reduction":
            out["payload"] = lv.payload
            out["tokens_kept"] = lv.tokens_kept
        return out

    doc: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    if profile.name:
        doc["name"] = profile.name
    m = profile.model
    doc["model"] = {
        "id": m.id,
        "n_layers": m.n_layers,
        "n_kv_heads": m.n_kv_heads,
        "head_dim": m.head_dim,
        "kv_elements_per_token": m.kv_elements_per_token,
    }
    doc["device"] = {"name": profile.device.name}
    if profile.device.cores is not None:
        doc["device"]["cores"] = profile.device.cores
    doc["chunk_tokens"] = profile.chunk_tokens
    doc["levels"] = [level(lv) for lv in profile.levels]
    doc["text"] = {"quality": profile.text.quality}
    doc["prefill"] = {
        "points": [
            {"context_tokens": p.context_tokens, "tokens_per_s": p.tokens_per_s}
            for p in profile.prefill
        ]
    }
    pv = profile.provenance
    doc["provenance"] = {
        "command": pv.command,
        "date": pv.date,
        "kvcast_version": pv.kvcast_version,
        "contexts": list(pv.contexts),
        "notes": pv.notes,
    }
    if profile.extra:
        doc["extra"] = dict(profile.extra)
    return doc


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in `profiles/`."""
    if not PROFILES_DIR.is_dir():
        return []
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def resolve_profile_path(path_or_name: str | Path) -> Path:
    """A file path as given, else a shipped profile `profiles/<name>.json`; clear error otherwise."""
    p = Path(path_or_name)
    if p.suffix == ".json" or p.parent != Path(".") or p.exists():
        if not p.is_file():
            raise InputError(f"codec profile file not found: {p}")
        return p
    candidate = PROFILES_DIR / f"{path_or_name}.json"
    if candidate.is_file():
        return candidate
    known = shipped_profiles()
    hint = (
        f"shipped profiles: {', '.join(known)}"
        if known
        else f"no profiles are shipped yet in {PROFILES_DIR} (they are written by `kvcast profile`)"
    )
    raise InputError(f"codec profile {str(path_or_name)!r} not found: not a file, and {hint}")


def load_profile(path_or_name: str | Path) -> CodecProfile:
    """Load and validate a codec profile from a path or a shipped profile's name."""
    path = resolve_profile_path(path_or_name)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file") from exc
    profile = profile_from_dict(raw, source=str(path))
    if not profile.name:
        profile = _with_name(profile, path.stem)
    return profile


def _with_name(profile: CodecProfile, name: str) -> CodecProfile:
    return replace(profile, name=name)


def save_profile(profile: CodecProfile, path: str | Path) -> Path:
    """Validate and write `profile` as JSON (2-space indent, stable key order)."""
    doc = profile_to_dict(profile)
    profile_from_dict(
        json.loads(json.dumps(doc)), source=str(path)
    )  # never write what we can't read
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out

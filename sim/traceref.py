"""Trace references in scenarios: files, folders (a sweep over their files), globs, or names.

A name such as `mahimahi/ATT-LTE-driving.down` is looked up, in order, under `$KVCAST_TRACES_DIR`,
the user cache's `traces/` folder (where `kvcast traces fetch` stores public sets), and the
team's shared data folder (`$KVCAST_SHARED/traces`, else `../shared/traces` beside the checkout).
Relative paths are tried against the scenario file's folder first, then the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvcast.errors import InputError
from kvcast.traces.catalog import search_dirs
from kvcast.traces.readers import load_trace
from kvcast.traces.spec import build_trace as build_spec
from kvcast.traces.trace import Trace

_SKIP_PREFIXES = ("LICENSE", "COPYING", "README", ".")
_SKIP_SUFFIXES = (".md", ".txt.sha256", ".json.sha256")


def search_roots() -> list[Path]:
    """`kvcast.traces.catalog.search_dirs()` ($KVCAST_TRACES_DIR, the user cache), then the team's
    shared data folder ($KVCAST_SHARED/traces, else ../shared/traces beside the checkout)."""
    roots = list(search_dirs())
    shared = os.environ.get("KVCAST_SHARED")
    roots.append(
        Path(shared) / "traces"
        if shared
        else Path(__file__).resolve().parents[2] / "shared" / "traces"
    )
    return roots


def _trace_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(_SKIP_PREFIXES)
        and not p.name.endswith(_SKIP_SUFFIXES)
    )


def resolve_trace_refs(
    refs: Sequence[Any], base_dir: Path, fail: Callable[[str, str], InputError]
) -> list[str]:
    """Expand references to absolute file paths (folders and globs become their sorted files)."""
    out: list[str] = []
    for i, ref in enumerate(refs):
        key = f"trace[{i}]" if len(refs) > 1 else "trace"
        if not isinstance(ref, str) or not ref:
            raise fail(key, f"expected a trace name, path or folder, got {ref!r}")
        found = _resolve_one(ref, base_dir)
        if not found:
            looked = ", ".join(str(r) for r in [base_dir, Path.cwd(), *search_roots()])
            raise fail(key, f"trace {ref!r} not found (looked under: {looked})")
        out.extend(str(p.resolve()) for p in found)
    if len(set(out)) != len(out):
        raise fail("trace", "the same trace file is listed twice")
    return out


def _resolve_one(ref: str, base_dir: Path) -> list[Path]:
    p = Path(ref).expanduser()
    bases = [Path("/")] if p.is_absolute() else [base_dir, Path.cwd(), *search_roots()]
    for base in bases:
        cand = base / p
        if any(ch in ref for ch in "*?["):
            hits = (
                sorted(x for x in cand.parent.glob(cand.name) if x.is_file())
                if cand.parent.is_dir()
                else []
            )
            if hits:
                return hits
            continue
        if cand.is_file():
            return [cand]
        if cand.is_dir():
            files = _trace_files(cand)
            if files:
                return files
    return []


@lru_cache(maxsize=16)
def _load_file(path: str, fmt: str | None, bytes_per_opportunity: float | None) -> Any:
    opts: dict[str, Any] = {}
    if bytes_per_opportunity is not None:
        opts["bytes_per_opportunity"] = bytes_per_opportunity
    return load_trace(path, fmt, **opts)


def synthetic_trace(spec: dict[str, Any]) -> Any:
    """A generated trace: `kind` names a generator of `kvcast.traces.synthetic` (constant, steps,
    markov, gauss_markov, on_off, cachegen); the other keys are its parameters."""
    params = {k: v for k, v in spec.items() if k != "kind"}
    return build_spec({"synthetic": spec["kind"], **params}, where="synthetic")


def synthetic_refs(specs: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The `trace` of each generated trace's cases: `synthetic:<kind>` for a scenario's only
    one; with several (a sweep), `synthetic:<kind>(<parameter>=<value>, ...)`."""
    if len(specs) == 1:
        return (f"synthetic:{specs[0]['kind']}",)
    return tuple(
        f"synthetic:{s['kind']}(" + ", ".join(f"{k}={v}" for k, v in s.items() if k != "kind") + ")"
        for s in specs
    )


def build_trace(link: Any, ref: str) -> Any:
    """The `Trace` a case runs on: loaded (or generated) and scaled as the scenario says."""
    if ref.startswith("synthetic:"):
        i = link.traces.index(ref)
        tr = synthetic_trace(link.synthetic[i])
        field = "link.synthetic" if len(link.synthetic) == 1 else f"link.synthetic[{i}]"
    else:
        try:
            tr = _load_file(ref, link.format, link.bytes_per_opportunity)
        except InputError as exc:
            raise InputError(f"link.trace: {exc}") from None
        field = f"link.trace {ref}"
    if tr.mean_bps() <= 0:
        raise InputError(
            f"{field}: the trace delivers no bytes at all (every rate is 0), so no transfer "
            "over it could finish"
        )
    factor = link.scale
    if link.mean_gbps is not None:
        factor = link.mean_gbps * 1e9 / tr.mean_bps()
    if factor == 1.0:
        return tr
    return Trace(
        f"{tr.name}x{factor:g}",
        tr.knot_t.copy(),
        tr.knot_cum * factor,
        tr.duration_s,
        loop=tr.loop,
        kind=tr.kind,
        meta={**tr.meta, "scale": f"{factor:g}"},
        latency_t=tr.latency_t,
        latency_s=tr.latency_s,
    )

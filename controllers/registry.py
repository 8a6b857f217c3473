"""Controllers by name: `get_controller("cachegen")`, `get_controller("fixed:L3")`, ...

A name is `kind` or `kind:arg`; parameters come as keyword arguments (from a scenario's
`controller_params`). Unknown names and parameters fail with the list of what is known.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvcast.errors import InputError

from . import bba, cachegen, importance, mpc, oracle, simple, stochastic
from .base import Controller


@dataclass(frozen=True)
class Entry:
    """How to make a controller: `factory`'s keyword parameters are the controller's parameters
    (a scenario's `controller_params`); a factory with an `arg` parameter takes `kind:arg`."""

    factory: Callable[..., Controller]
    doc: str  # one line: the rule


# Every controller kvcast ships, by name; adding one is a line here (docs/architecture.md).
CONTROLLERS: dict[str, Entry] = {
    "cachegen": Entry(
        cachegen.cachegen_paper,
        "CacheGen paper: last measured throughput; best level whose remaining chunks fit the SLO "
        "through the pipeline; TEXT if that finishes sooner",
    ),
    "cachegen-artifact": Entry(
        cachegen.cachegen_artifact,
        "CacheGen released code: SLO/n per chunk, TRUE per-chunk bandwidth (sees the future)",
    ),
    "bba": Entry(
        bba.buffer_based,
        "buffer-based (BBA) with the SLO slack as the buffer; reservoir/cushion in units of pace",
    ),
    "mpc": Entry(
        mpc.robust_mpc,
        "RobustMPC: harmonic-mean throughput / (1 + max recent error); every plan of the next 5 "
        "chunks projected through the real pipeline; best utility",
    ),
    "stochastic": Entry(
        stochastic.Stochastic,
        "expected utility over a learned distribution of chunk throughputs (kvcast's own)",
    ),
    "fixed": Entry(simple.fixed_level, "every chunk at the named level: fixed:<level>"),
    "importance": Entry(
        importance.importance_first,
        "importance-first streaming: H2O tiers (top 25%, next 25%, rest) of every chunk at the "
        "named codec level; at the deadline the receiver proceeds with the tiers it has",
    ),
    "text": Entry(
        simple.all_text, "recompute everything: every chunk sent as token ids and prefilled"
    ),
    "raw": Entry(simple.raw_fp16, "uncompressed fp16 KV (the profile's 'fp16' baseline)"),
    "int8": Entry(
        simple.int8_baseline,
        "CacheGen's 8-bit per-token quantization baseline (the profile's 'int8')",
    ),
    "oracle": Entry(
        oracle.oracle_bound,
        "the bound: KNOWS THE TRACE, plans each request alone on link and GPU for the highest "
        "utility",
    ),
}


def known_controllers() -> dict[str, str]:
    """kind -> one-line description."""
    return {kind: entry.doc for kind, entry in CONTROLLERS.items()}


def get_controller(name: str, **params: Any) -> Controller:
    kind, _, arg = name.partition(":")
    entry = CONTROLLERS.get(kind)
    if entry is None:
        raise InputError(
            f"unknown controller {name!r} (known: {', '.join(sorted(CONTROLLERS))}, fixed:<level>)"
        )
    factory = entry.factory
    sig = inspect.signature(factory)
    takes_arg = "arg" in sig.parameters
    if arg and not takes_arg:
        raise InputError(f"controller {kind!r} takes no ':argument', got {name!r}")
    if takes_arg and not arg:
        raise InputError(f"controller {kind!r} needs an argument, as in '{kind}:<level>'")
    allowed = [p for p in sig.parameters if p not in ("arg", "name")]
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise InputError(
            f"controller {name!r}: unknown parameter(s) {', '.join(unknown)} (allowed: {', '.join(allowed) or 'none'})"
        )
    try:
        ctrl = factory(arg=arg, **params) if takes_arg else factory(**params)
    except (TypeError, ValueError) as exc:
        raise InputError(f"controller {name!r}: {exc}") from exc
    ctrl.name = name
    return ctrl

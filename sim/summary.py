"""A run's figures per controller and per case (summary.json) and the table `kvcast run` prints.

Computed from the requests table by group indices over its columns, so a million-row study is
summarised in seconds rather than by filtering the table once per (case, controller).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kvcast import __version__
from kvcast.objective import BOUND_CONTROLLER, display_name

from .scenario import Case, Scenario

BOUND_NOTE = (
    "oracle = the bound: it knows the trace and plans each request alone on the link and the GPU "
    "(contention can only delay a request), so no controller can beat it on any request. "
    "cachegen-artifact uses each chunk's true bandwidth, as CacheGen's released code did."
)
_METRIC_COLUMNS = ("ttft_s", "met_slo", "quality", "utility", "bytes_sent", "n_text", "n_chunks")


def controller_metrics(cols: dict[str, np.ndarray]) -> dict[str, Any]:
    """The summary fields of one group of request rows (`cols`: column -> the group's values)."""
    ttft = cols["ttft_s"]
    return {
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p95_s": float(np.percentile(ttft, 95)),
        "slo_violation_rate": float(1.0 - cols["met_slo"].mean()),
        "mean_quality": float(cols["quality"].mean()),
        "mean_utility": float(cols["utility"].mean()),
        "bytes_sent": float(cols["bytes_sent"].mean()),  # mean per request
        "bytes_sent_total": int(cols["bytes_sent"].sum()),
        "text_share": float(cols["n_text"].sum() / cols["n_chunks"].sum()),
        "n_requests": int(ttft.size),
    }


def _with_bound_ratio(per: dict[str, dict[str, Any]]) -> None:
    """utility_vs_bound: each controller's mean utility over the bound's (None without a bound,
    or where the bound's utility is 0: nothing could be done)."""
    bound = per.get(BOUND_CONTROLLER, {}).get("mean_utility")
    for m in per.values():
        m["utility_vs_bound"] = float(m["mean_utility"] / bound) if bound else None


def _grouped(
    requests: pd.DataFrame, keys: list[str], cols: dict[str, np.ndarray]
) -> dict[Any, dict[str, Any]]:
    return {
        key: controller_metrics({c: v[idx] for c, v in cols.items()})
        for key, idx in requests.groupby(keys, sort=False).indices.items()
    }


def summarize(
    sc: Scenario, requests: pd.DataFrame, names: Sequence[str], cases: Sequence[Case]
) -> dict[str, Any]:
    cols = {c: requests[c].to_numpy() for c in _METRIC_COLUMNS}
    by_controller = _grouped(requests, ["controller"], cols)
    by_case = _grouped(requests, ["case", "controller"], cols)
    per = {n: by_controller[n] for n in names}
    _with_bound_ratio(per)
    case_list = []
    for c in cases:
        cm = {n: by_case[(c.label, n)] for n in names}
        _with_bound_ratio(cm)
        case_list.append(
            {
                "case": c.label,
                "trace": c.trace_name,
                "slo_s": c.slo_s,
                "seed": c.seed,
                "controllers": cm,
            }
        )
    return {
        "kvcast_version": __version__,
        "scenario": sc.name,
        "seed": list(sc.seeds) if len(sc.seeds) > 1 else sc.seeds[0],
        "objective": {**sc.objective.to_dict(), "rule": sc.objective.describe()},
        "controllers": per,
        "cases": case_list,
        "notes": BOUND_NOTE,
    }


def format_table(per: dict[str, dict[str, Any]]) -> str:
    """The per-controller figures `kvcast run` prints."""
    w = max(20, *(len(display_name(n)) for n in per))
    head = (
        f"{'controller':<{w}} {'TTFT p50':>9} {'TTFT p95':>9} {'SLO miss':>8} {'quality':>8} "
        f"{'utility':>8} {'vs bound':>8} {'MB/req':>9} {'TEXT':>6}"
    )
    lines = [head, "-" * len(head)]
    for name, m in per.items():
        vb = m.get("utility_vs_bound")
        lines.append(
            f"{display_name(name):<{w}} {m['ttft_p50_s']:>8.3f}s {m['ttft_p95_s']:>8.3f}s "
            f"{m['slo_violation_rate']:>8.1%} {m['mean_quality']:>8.4f} {m['mean_utility']:>8.4f} "
            f"{(f'{vb:.4f}' if vb is not None else '-'):>8} {m['bytes_sent'] / 1e6:>9.2f} "
            f"{m['text_share']:>6.1%}"
        )
    return "\n".join(lines)

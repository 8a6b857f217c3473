"""The summary table: per controller, the figures `kvcast run` prints (from summary.json)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvcast.objective import display_name
from kvcast.reports.run_folder import RunData

COLUMNS = (
    ("controller", "controller"),
    ("n_requests", "requests"),
    ("ttft_p50_s", "TTFT p50 (s)"),
    ("ttft_p95_s", "TTFT p95 (s)"),
    ("slo_violation_rate", "SLO violations"),
    ("mean_quality", "mean quality"),
    ("mean_utility", "mean utility"),
    ("utility_vs_bound", "utility / bound"),
    ("bytes_sent", "bytes sent / request"),
    ("text_share", "TEXT share"),
)


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_value(field: str, value: float | None) -> str:
    """Format as the run command prints: seconds to ms precision, rates as percentages."""
    if value is None:
        return "–"
    if field == "n_requests":
        return f"{int(value):,}"
    if field.endswith("_s"):
        return f"{value:.3f}" if np.isfinite(value) else "inf"
    if field in ("slo_violation_rate", "text_share"):
        return f"{100 * value:.1f}%"
    if field == "bytes_sent":
        return _bytes(value)
    return f"{value:.4f}"


def summary_table(run: RunData) -> go.Figure:
    rows = run.summary["controllers"]
    names = run.controllers
    cells = [[display_name(n) for n in names]] + [
        [format_value(f, rows[c][f]) for c in names] for f, _ in COLUMNS[1:]
    ]
    fig = go.Figure(
        go.Table(
            header={
                "values": [label for _, label in COLUMNS],
                "fill_color": "#3b4c6b",
                "font": {"color": "white", "size": 12},
                "align": "left",
            },
            cells={"values": cells, "align": "left", "height": 26, "fill_color": "#f7f7f7"},
        )
    )
    fig.update_layout(
        title={"text": "Summary per controller (summary.json)"},
        height=110 + 28 * len(names),
        margin={"t": 50, "b": 10, "l": 10, "r": 10},
    )
    return fig

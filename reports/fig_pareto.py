"""Quality against TTFT per request, with each controller's Pareto front (fast and good)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from kvcast.reports.run_folder import RunData
from kvcast.reports.style import SLO_COLOR, controller_colors, log_x_toggle, subtitle

# Above this many requests per controller, a seeded sample is drawn (fronts use every request).
MAX_POINTS_PER_CONTROLLER = 600
SAMPLE_SEED = 0


def pareto_front(ttft: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the requests no other request beats on both TTFT (lower) and quality (higher).

    Sorted by TTFT, then best quality first; a point is on the front when its quality is
    strictly above every faster point's. Returned in TTFT order.
    """
    finite = np.flatnonzero(np.isfinite(ttft))
    order = finite[np.lexsort((-quality[finite], ttft[finite]))]
    q = quality[order]
    faster_best = np.concatenate([[-np.inf], np.maximum.accumulate(q)[:-1]])
    return order[q > faster_best].astype(np.int64)


def sample_rows(n: int, keep: np.ndarray, limit: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Row indices to draw: all when n <= limit, else `keep` plus a seeded uniform sample."""
    if n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(n), keep)
    extra = rng.choice(rest, size=max(limit - len(keep), 0), replace=False)
    return np.sort(np.concatenate([keep, extra]))


def quality_vs_ttft(run: RunData) -> go.Figure:
    req = run.requests
    colors = controller_colors(run.controllers)
    fig = go.Figure()
    sampled = False
    for name in run.controllers:
        rows: pd.DataFrame = req[req["controller"] == name]
        ttft = rows["ttft_s"].to_numpy()
        quality = rows["quality"].to_numpy()
        front = pareto_front(ttft, quality)
        show = sample_rows(len(rows), front, MAX_POINTS_PER_CONTROLLER)
        show = show[np.isfinite(ttft[show])]
        sampled |= len(rows) > MAX_POINTS_PER_CONTROLLER
        custom = np.column_stack(
            [
                rows["request_id"].to_numpy()[show],
                rows["slo_s"].to_numpy()[show],
                rows["n_text"].to_numpy()[show],
                rows["n_chunks"].to_numpy()[show],
            ]
        ).astype(np.float32)
        case = rows["case"].to_numpy()[show]
        fig.add_trace(
            go.Scatter(
                x=ttft[show].astype(np.float32),
                y=quality[show].astype(np.float32),
                mode="markers",
                marker={"color": colors[name], "size": 5, "opacity": 0.45},
                name=name,
                legendgroup=name,
                customdata=custom,
                text=case if len(run.cases) > 1 else None,
                hovertemplate=(
                    f"{name} · request %{{customdata[0]}}"
                    + ("<br>case %{text}" if len(run.cases) > 1 else "")
                    + "<br>TTFT %{x:.3f} s (SLO %{customdata[1]:g} s)<br>quality %{y:.4f}"
                    + "<br>TEXT chunks %{customdata[2]} of %{customdata[3]}<extra></extra>"
                ),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=ttft[front],
                y=quality[front],
                mode="lines+markers",
                line={"shape": "hv", "color": colors[name], "width": 2},
                marker={"size": 7, "symbol": "diamond", "color": colors[name]},
                name=f"{name} front",
                legendgroup=name,
                showlegend=False,
                hovertemplate=f"{name} Pareto front<br>TTFT %{{x:.3f}} s<br>quality %{{y:.4f}}<extra></extra>",
            )
        )
    for slo in np.unique(req["slo_s"].to_numpy())[:6]:
        fig.add_vline(x=float(slo), line={"color": SLO_COLOR, "dash": "dash", "width": 1.5})
    note = "lines: each controller's Pareto front (no request both faster and better); dashed: SLO"
    if sampled:
        note += (
            f"<br>dots: a seeded sample of {MAX_POINTS_PER_CONTROLLER:,} requests per controller "
            "plus every front point; fronts computed on all requests"
        )
    fig.update_layout(
        title={"text": "Quality against TTFT per request"},
        xaxis={"title": {"text": "time to first token (s)"}},
        yaxis={"title": {"text": "quality (uncompressed = 1)"}},
        height=470,
        hovermode="closest",
    )
    log_note = log_x_toggle(fig, req["ttft_s"].to_numpy())
    subtitle(fig, note + (f"; {log_note}" if log_note else ""))
    return fig

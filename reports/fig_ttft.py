"""TTFT CDF per controller with the SLO marked: how often each controller is fast enough."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvcast.reports.run_folder import RunData
from kvcast.reports.style import SLO_COLOR, controller_colors, log_x_toggle, subtitle

# Above this many requests per controller the CDF is drawn through this many quantiles.
CDF_MAX_POINTS = 1000
MAX_SLO_LINES = 6


def cdf_points(ttft: np.ndarray, max_points: int = CDF_MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF (x sorted, y in (0, 1]); exact up to max_points, else evenly spaced quantiles.

    Quantiles at probabilities k/max_points keep the curve's shape and both ends exact.
    """
    x = np.sort(ttft)
    n = len(x)
    y = np.arange(1, n + 1) / n
    if n <= max_points:
        return x, y
    idx = np.unique(np.ceil(np.linspace(1, n, max_points) - 1).astype(np.int64))
    return x[idx], y[idx]


def ttft_cdf(run: RunData) -> go.Figure:
    req = run.requests
    colors = controller_colors(run.controllers)
    fig = go.Figure()
    notes = []
    downsampled = False
    for name in run.controllers:
        ttft = req.loc[req["controller"] == name, "ttft_s"].to_numpy()
        finite = ttft[np.isfinite(ttft)]
        if len(finite) < len(ttft):
            notes.append(f"{name}: {len(ttft) - len(finite)} request(s) never got a first token")
        x, y = cdf_points(finite)
        # y is the share of *all* requests, so unfinished requests keep the curve below 1.
        y = y * len(finite) / max(len(ttft), 1)
        downsampled |= len(finite) > CDF_MAX_POINTS
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={"shape": "hv", "color": colors[name], "width": 2},
                name=name,
                hovertemplate=f"{name}<br>TTFT %{{x:.3f}} s<br>%{{y:.1%}} of requests<extra></extra>",
            )
        )
    slos = np.unique(req["slo_s"].to_numpy())
    for slo in slos[:MAX_SLO_LINES]:
        fig.add_vline(
            x=float(slo),
            line={"color": SLO_COLOR, "dash": "dash", "width": 1.5},
            annotation={"text": f"SLO {slo:g} s", "font": {"color": SLO_COLOR}},
            annotation_position="top right",
        )
    if len(slos) > MAX_SLO_LINES:
        notes.append(f"SLOs marked: first {MAX_SLO_LINES} of {len(slos)} distinct values")
    if downsampled:
        notes.append(f"curves drawn through {CDF_MAX_POINTS} quantiles of all requests")
    fig.update_layout(
        title={"text": "TTFT CDF per controller"},
        xaxis={"title": {"text": "time to first token (s)"}},
        yaxis={"title": {"text": "share of requests"}, "range": [0, 1.02], "tickformat": ".0%"},
        height=430,
    )
    log_note = log_x_toggle(fig, req["ttft_s"].to_numpy())
    if log_note:
        notes.append(log_note)
    subtitle(fig, "; ".join(notes) or f"all {len(req):,} requests; dashed: the SLO")
    return fig

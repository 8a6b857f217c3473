"""Simulation against emulation (`kvcast emulate --compare`): per chunk and per request."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvcast.reports.run_folder import RunData
from kvcast.reports.style import controller_colors, subtitle


def _errors(err: np.ndarray) -> str:
    a = np.abs(err[np.isfinite(err)])
    if a.size == 0:
        return "no rows"
    return f"|error| median {100 * np.median(a):.2f}%, p95 {100 * np.percentile(a, 95):.2f}%"


def fidelity(run: RunData) -> go.Figure:
    """Two scatters, simulated against emulated: each chunk's transfer time, each request's TTFT
    (the simulator replaying the emulation's choices); on the diagonal the two agree."""
    ch, rq = run.fidelity_chunks, run.fidelity_requests
    assert ch is not None and rq is not None
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"chunk transfer time: {_errors(ch.transfer_error.to_numpy())}",
            f"request TTFT: {_errors(rq.ttft_error.to_numpy())}",
        ),
        horizontal_spacing=0.1,
    )
    names = [c for c in run.controllers if c in set(ch.controller)]
    colors = controller_colors(run.controllers)
    for col, table, x, y, what in (
        (1, ch, "emulated_transfer_s", "simulated_transfer_s", "transfer"),
        (2, rq, "emulated_ttft_s", "simulated_ttft_s", "TTFT"),
    ):
        for name in names:
            part = table[table.controller == name]
            fig.add_trace(
                go.Scatter(
                    x=part[x],
                    y=part[y],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={"color": colors[name], "size": 6},
                    hovertemplate=f"{name}<br>emulated {what} %{{x:.3f}} s<br>simulated %{{y:.3f}} s<extra></extra>",
                ),
                row=1,
                col=col,
            )
        lo = float(min(table[x].min(), table[y].min())) if len(table) else 0.01
        hi = float(max(table[x].max(), table[y].max())) if len(table) else 1.0
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                line={"color": "#888", "dash": "dash"},
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="emulated, s (log)", type="log", row=1, col=col)
        fig.update_yaxes(title_text="simulated, s (log)", type="log", row=1, col=col)
    fig.update_layout(title={"text": "Simulation against emulation"}, height=470, margin={"t": 110})
    subtitle(fig, f"{len(ch)} chunks, {len(rq)} requests; on the diagonal they agree")
    return fig

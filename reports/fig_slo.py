"""SLO-violation rate and TEXT share per controller (and per case when the run swept cases)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvcast.reports.run_folder import RunData
from kvcast.reports.style import controller_colors, subtitle


def slo_and_text(run: RunData) -> go.Figure:
    """Two bar charts from summary.json, so they match the summary table exactly."""
    rows = run.summary["controllers"]
    names = run.controllers
    colors = [controller_colors(names)[c] for c in names]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("SLO-violation rate", "TEXT share (recomputed instead of fetched)"),
        horizontal_spacing=0.12,
    )
    for col, field in ((1, "slo_violation_rate"), (2, "text_share")):
        values = [rows[c][field] for c in names]
        fig.add_trace(
            go.Bar(
                x=names,
                y=values,
                marker={"color": colors},
                text=[f"{100 * v:.1f}%" for v in values],
                textposition="outside",
                cliponaxis=False,
                showlegend=False,
                hovertemplate="%{x}<br>" + field + " %{y:.2%}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        top = max(max(values), 0.01)
        fig.update_yaxes(tickformat=".0%", range=[0, top * 1.18], row=1, col=col)
    fig.update_layout(title={"text": "SLO violations and TEXT fallback per controller"}, height=400)
    subtitle(fig, f"from summary.json over all {len(run.cases)} case(s)")
    return fig


def per_case_table(run: RunData) -> pd.DataFrame:
    """Violation rate and TEXT share per (case, controller), computed from requests.parquet."""
    req = run.requests
    grouped = req.groupby(["case", "controller"], sort=False)
    out = grouped.agg(
        violations=("met_slo", lambda s: 1.0 - float(np.mean(s))),
        n_text=("n_text", "sum"),
        n_chunks=("n_chunks", "sum"),
        n=("request_id", "size"),
    )
    out["text_share"] = out["n_text"] / out["n_chunks"].where(out["n_chunks"] > 0)
    return out.reset_index()


def per_case_heatmaps(run: RunData) -> go.Figure:
    """Case x controller heatmaps; a sweep over many traces or SLOs stays one compact figure."""
    table = per_case_table(run)
    cases, names = run.cases, run.controllers
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("SLO-violation rate", "TEXT share of chunks"),
        shared_yaxes=True,
        horizontal_spacing=0.06,
    )
    for col, field in ((1, "violations"), (2, "text_share")):
        grid = table.pivot(index="case", columns="controller", values=field)
        grid = grid.reindex(index=cases, columns=names)
        z = grid.to_numpy(dtype=np.float64)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=names,
                y=cases,
                zmin=0,
                zmax=1,
                colorscale="Reds",
                showscale=col == 2,
                colorbar={"tickformat": ".0%"},
                texttemplate="%{z:.0%}" if z.size <= 400 else None,
                hovertemplate="case %{y}<br>%{x}<br>" + field + " %{z:.1%}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_layout(
        title={"text": "SLO violations and TEXT share per case"},
        height=min(900, max(320, 120 + 22 * len(cases))),
    )
    subtitle(fig, "computed from requests.parquet; TEXT share = TEXT chunks / all chunks")
    return fig

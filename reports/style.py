"""Shared look of every figure: one colour per controller and per level, one compact template.

Levels keep the same colour in the timeline, the heatmap and the codec curve, so a reader can
follow one level across figures; controllers likewise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

from kvcast.chunks import TEXT_LEVEL
from kvcast.reports.run_folder import RunData

TEXT_COLOR = "#d62728"
OTHER_COLOR = "#bbbbbb"
SLO_COLOR = "#d62728"
CONTROLLER_COLORS = qualitative.D3[:3] + qualitative.D3[4:] + qualitative.Dark2


def template() -> go.layout.Template:
    """A small template (Plotly's default one is ~7 KB per figure; the page ships it once)."""
    return go.layout.Template(
        layout=go.Layout(
            font={"family": "Helvetica, Arial, sans-serif", "size": 12, "color": "#222"},
            paper_bgcolor="white",
            plot_bgcolor="white",
            xaxis={
                "showgrid": True,
                "gridcolor": "#e5e5e5",
                "zeroline": False,
                "linecolor": "#888",
            },
            yaxis={
                "showgrid": True,
                "gridcolor": "#e5e5e5",
                "zeroline": False,
                "linecolor": "#888",
            },
            hoverlabel={"align": "left"},
            margin={"l": 70, "r": 30, "t": 70, "b": 55},
            legend={"bgcolor": "rgba(255,255,255,0.8)"},
        )
    )


def controller_colors(controllers: list[str]) -> dict[str, str]:
    return {c: CONTROLLER_COLORS[i % len(CONTROLLER_COLORS)] for i, c in enumerate(controllers)}


@dataclass(frozen=True)
class Levels:
    """Levels best quality first (the profile's order), then levels absent from it, then TEXT."""

    order: tuple[str, ...]
    colors: dict[str, str]
    not_in_profile: tuple[str, ...]

    def rung(self, level: str) -> int:
        return self.order.index(level)


def levels_of(run: RunData) -> Levels:
    profile_order = [lv["name"] for lv in run.profile["levels"]]
    used = set(run.chunks["level"].unique())
    extra = tuple(sorted(used - set(profile_order) - {TEXT_LEVEL}))
    codec = [*profile_order, *extra]
    if len(codec) == 1:
        shades = [sample_colorscale("Viridis", [0.3])[0]]
    else:
        shades = sample_colorscale(
            "Viridis", [i / (len(codec) - 1) * 0.92 for i in range(len(codec))]
        )
    colors = dict(zip(codec, shades, strict=True))
    colors[TEXT_LEVEL] = TEXT_COLOR
    return Levels(order=(*codec, TEXT_LEVEL), colors=colors, not_in_profile=extra)


def subtitle(fig: go.Figure, text: str) -> None:
    """Put a note (e.g. how data were downsampled) in the figure itself, under its title."""
    fig.update_layout(title={"subtitle": {"text": text, "font": {"size": 11, "color": "#555"}}})


LOG_SPREAD = 30.0  # p99 / p1 of TTFT above which the time axis starts as log


def log_x_toggle(fig: go.Figure, ttft: np.ndarray) -> str:
    """Buttons to switch the x axis between linear and log time; start with log when TTFTs span
    more than LOG_SPREAD x (long tails squeeze the region around the SLO). Returns a note."""
    finite = ttft[np.isfinite(ttft) & (ttft > 0)]
    p1, p99 = np.percentile(finite, [1, 99]) if len(finite) else (1.0, 1.0)
    log = bool(p99 > LOG_SPREAD * p1)
    fig.update_layout(
        xaxis={"type": "log" if log else "linear"},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "active": 1 if log else 0,
                "x": 0,
                "xanchor": "left",
                "y": 1.02,
                "yanchor": "bottom",
                "pad": {"r": 4, "t": 0},
                "font": {"size": 11},
                "buttons": [
                    {
                        "label": "linear time",
                        "method": "relayout",
                        "args": [{"xaxis.type": "linear"}],
                    },
                    {"label": "log time", "method": "relayout", "args": [{"xaxis.type": "log"}]},
                ],
            }
        ],
    )
    return f"log time axis: TTFTs span {p99 / p1:.0f}x (p1 to p99)" if log else ""

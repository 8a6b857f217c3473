"""Per-request timeline: bandwidth over time, each chunk's transfer and GPU work, the deadline.

A report cannot hold a timeline for every request of a large run, so it keeps a documented
subset: per controller, its worst, median and best request by lateness (TTFT minus SLO), across
all cases, each shown under every controller. Runs with at most ALL_REQUESTS_LIMIT requests keep
them all. The page lets the reader pick the request and the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvcast.reports.run_folder import RunData
from kvcast.reports.style import OTHER_COLOR, SLO_COLOR, Levels, levels_of, subtitle

ALL_REQUESTS_LIMIT = 12
LANES = ("GPU", "link")  # bottom to top in the lane panel


@dataclass
class Pick:
    """One request offered in the timeline's request menu, and why it was picked."""

    case: str
    request_id: int
    reasons: list[str] = field(default_factory=list)

    def label(self, many_cases: bool) -> str:
        head = f"request {self.request_id}" + (f" (case {self.case})" if many_cases else "")
        return head + (f" — {', '.join(self.reasons)}" if self.reasons else "")


def pick_requests(run: RunData) -> tuple[list[Pick], str]:
    """The requests the timeline offers, and a sentence saying how they were chosen."""
    req = run.requests
    case_rank = {c: i for i, c in enumerate(run.cases)}
    keys = req[["case", "request_id"]].drop_duplicates()
    if len(keys) <= ALL_REQUESTS_LIMIT:
        order = sorted(
            zip(keys["case"], keys["request_id"], strict=True),
            key=lambda k: (case_rank[k[0]], k[1]),
        )
        return [Pick(c, int(r)) for c, r in order], f"all {len(keys)} requests"
    picks: dict[tuple[str, int], Pick] = {}
    for name in run.controllers:
        rows = req[req["controller"] == name]
        late = (rows["ttft_s"] - rows["slo_s"]).fillna(np.inf).to_numpy()
        order = np.lexsort(
            (rows["request_id"].to_numpy(), rows["case"].map(case_rank).to_numpy(), late)
        )
        for tag, pos in (("worst", -1), ("median", len(order) // 2), ("best", 0)):
            row = rows.iloc[order[pos]]
            key = (row["case"], int(row["request_id"]))
            picks.setdefault(key, Pick(*key)).reasons.append(f"{tag} for {name}")
    chosen = sorted(picks.values(), key=lambda p: (case_rank[p.case], p.request_id))
    how = (
        f"{len(chosen)} of {len(keys):,} requests: each controller's worst, median and best "
        "by lateness (TTFT − SLO), each shown under every controller"
    )
    return chosen, how


def _merge_intervals(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals, so busy periods of many other requests draw as few bars."""
    if len(start) == 0:
        return start, end
    order = np.argsort(start, kind="stable")
    s, e = start[order], np.maximum.accumulate(end[order])
    new = np.concatenate([[True], s[1:] > e[:-1]])
    group = np.cumsum(new) - 1
    return s[new], np.asarray(pd.Series(e).groupby(group).max())


def _bandwidth(traces: pd.DataFrame, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """Trace samples in [t0, t1], plus the sample in force at t0 (the trace is a step function)."""
    t = traces["t_s"].to_numpy()
    bw = traces["bandwidth_bps"].to_numpy()
    inside = (t >= t0) & (t <= t1)
    before = np.flatnonzero(t < t0)
    if len(before):
        inside[before[-1]] = True
    return t[inside], bw[inside]


def _bw_unit(peak: float) -> tuple[str, float]:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if peak >= scale:
            return unit, scale
    return "bit/s", 1.0


class TimelineBuilder:
    """Builds timeline figures; indexes the run's tables once for many (request, controller)."""

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.levels: Levels = levels_of(run)
        self.many_cases = len(run.cases) > 1
        self.requests = run.requests.set_index(["case", "controller", "request_id"]).sort_index()
        chunks = run.chunks.sort_values(["case", "controller", "request_id", "chunk_index"])
        self.chunks = {k: g for k, g in chunks.groupby(["case", "controller"], sort=False)}
        self.traces = {
            k: g.sort_values("t_s") for k, g in run.traces.groupby(["case", "trace"], sort=False)
        }

    def figure(self, pick: Pick, controller: str, why: str) -> go.Figure:
        key = (pick.case, controller, pick.request_id)
        if key not in self.requests.index:
            fig = go.Figure()
            fig.add_annotation(
                text=f"{controller} has no request {pick.request_id} in case {pick.case}",
                showarrow=False,
            )
            fig.update_layout(height=300, xaxis={"visible": False}, yaxis={"visible": False})
            return fig
        req = self.requests.loc[key]
        if isinstance(req, pd.DataFrame):
            req = req.iloc[0]
        all_chunks = self.chunks.get((pick.case, controller), self.run.chunks.iloc[:0])
        mine = all_chunks[all_chunks["request_id"] == pick.request_id]
        others = all_chunks[all_chunks["request_id"] != pick.request_id]
        arrival = float(req["arrival_s"])
        ttft = float(req["ttft_s"])
        slo = float(req["slo_s"])
        last = float(mine["gpu_end_s"].max() - arrival) if len(mine) else 0.0
        span = max(slo, last, ttft if np.isfinite(ttft) else 0.0, 1e-3)
        lo, hi = -0.03 * span, 1.08 * span

        fig = make_subplots(
            rows=2,
            cols=1,
            shared_xaxes=True,
            row_heights=[0.5, 0.5],
            vertical_spacing=0.06,
        )
        self._add_bandwidth(fig, pick.case, str(req["trace"]), arrival, lo, hi)
        self._add_others(fig, others, arrival, lo, hi)
        self._add_chunks(fig, mine, arrival)
        self._add_marks(fig, slo, ttft)
        met = "met" if bool(req["met_slo"]) else "MISSED"
        title = (
            f"{controller} · request {pick.request_id}"
            + (f" · case {pick.case}" if self.many_cases else "")
            + f": TTFT {ttft:.3f} s, SLO {slo:g} s ({met}), quality {float(req['quality']):.4f}"
        )
        fig.update_layout(
            title={"text": title},
            barmode="overlay",
            height=540,
            hovermode="closest",
            margin={"t": 115},
            legend={"title": {"text": "level"}, "traceorder": "normal"},
        )
        fig.update_xaxes(range=[lo, hi], row=1, col=1)
        fig.update_xaxes(
            range=[lo, hi], title={"text": "time since the request arrived (s)"}, row=2, col=1
        )
        fig.update_yaxes(
            type="category", categoryorder="array", categoryarray=list(LANES), row=2, col=1
        )
        note = (
            f"arrived at t = {arrival:.3f} s; bars: link = transfer, GPU = decode "
            "(hatched: prefill of TEXT chunks); grey: other requests on the same link / GPU"
        )
        subtitle(fig, note + (f"<br>{why}" if why else ""))
        return fig

    def _add_bandwidth(
        self, fig: go.Figure, case: str, trace: str, arrival: float, lo: float, hi: float
    ) -> None:
        samples = self.traces.get((case, trace))
        t, bw = _bandwidth(samples, arrival + lo, arrival + hi)
        unit, scale = _bw_unit(float(bw.max()) if len(bw) else 0.0)
        fig.add_trace(
            go.Scatter(
                x=np.clip(t - arrival, lo, None),
                y=bw / scale,
                mode="lines",
                line={"shape": "hv", "color": "#1f77b4", "width": 1.5},
                fill="tozeroy",
                fillcolor="rgba(31,119,180,0.15)",
                name=f"bandwidth ({trace})",
                legendgroup="bandwidth",
                hovertemplate=f"t %{{x:.3f}} s<br>%{{y:.3g}} {unit}<extra>{trace}</extra>",
            ),
            row=1,
            col=1,
        )
        fig.update_yaxes(title={"text": f"bandwidth ({unit})"}, rangemode="tozero", row=1, col=1)

    def _add_others(
        self, fig: go.Figure, others: pd.DataFrame, arrival: float, lo: float, hi: float
    ) -> None:
        t0, t1 = arrival + lo, arrival + hi
        for lane, start_col, end_col in (
            ("link", "send_start_s", "arrive_s"),
            ("GPU", "gpu_start_s", "gpu_end_s"),
        ):
            s = others[start_col].to_numpy()
            e = others[end_col].to_numpy()
            keep = (e > t0) & (s < t1)
            s, e = _merge_intervals(s[keep], e[keep])
            if not len(s):
                continue
            fig.add_trace(
                go.Bar(
                    y=[lane] * len(s),
                    base=s - arrival,
                    x=e - s,
                    orientation="h",
                    marker={"color": OTHER_COLOR},
                    width=0.35,
                    opacity=0.7,
                    name="other requests",
                    legendgroup="others",
                    showlegend=lane == "link",
                    hovertemplate=f"{lane} busy with other requests<br>%{{base:.3f}} s for "
                    "%{x:.3f} s<extra></extra>",
                ),
                row=2,
                col=1,
            )

    def _add_chunks(self, fig: go.Figure, chunks: pd.DataFrame, arrival: float) -> None:
        for level in self.levels.order:
            part = chunks[chunks["level"] == level]
            if part.empty:
                continue
            transfer = (part["arrive_s"] - part["send_start_s"]).to_numpy()
            gpu = (part["gpu_end_s"] - part["gpu_start_s"]).to_numpy()
            custom = np.column_stack(
                [
                    part["chunk_index"].to_numpy(),
                    part["bytes"].to_numpy(),
                    part["tokens"].to_numpy(),
                    1e3 * transfer,
                    1e3 * gpu,
                ]
            )
            custom = np.vstack([custom, custom])
            kinds = part["gpu_kind"].to_numpy()
            n = len(part)
            fig.add_trace(
                go.Bar(
                    y=["link"] * n + ["GPU"] * n,
                    base=np.concatenate(
                        [part["send_start_s"].to_numpy(), part["gpu_start_s"].to_numpy()]
                    )
                    - arrival,
                    x=np.concatenate([transfer, gpu]),
                    orientation="h",
                    width=0.6,
                    marker={
                        "color": self.levels.colors[level],
                        "line": {"color": "white", "width": 0.5},
                        "pattern": {
                            "shape": [""] * n + ["/" if k == "prefill" else "" for k in kinds],
                            "fgcolor": "white",
                        },
                    },
                    name=level,
                    legendgroup=level,
                    customdata=custom,
                    text=np.concatenate([np.full(n, "transfer"), kinds]),
                    textposition="none",
                    hovertemplate=(
                        f"chunk %{{customdata[0]}} · level {level}<br>%{{text}} from %{{base:.4f}} s"
                        "<br>bytes %{customdata[1]:,.0f} (%{customdata[2]} tokens)"
                        "<br>transfer %{customdata[3]:.2f} ms"
                        "<br>GPU (decode/prefill) %{customdata[4]:.2f} ms<extra></extra>"
                    ),
                ),
                row=2,
                col=1,
            )

    def _add_marks(self, fig: go.Figure, slo: float, ttft: float) -> None:
        for row in (1, 2):
            fig.add_vline(
                x=slo, line={"color": SLO_COLOR, "dash": "dash", "width": 2}, row=row, col=1
            )
            if np.isfinite(ttft):
                fig.add_vline(x=ttft, line={"color": "black", "width": 1.5}, row=row, col=1)
        fig.add_annotation(
            x=slo,
            y=1,
            yref="y domain",
            text="deadline",
            showarrow=False,
            font={"color": SLO_COLOR},
            xanchor="left",
            yanchor="bottom",
            row=1,
            col=1,
        )
        if np.isfinite(ttft):
            fig.add_annotation(
                x=ttft,
                y=1,
                yref="y domain",
                text="first token",
                showarrow=False,
                xanchor="right",
                yanchor="bottom",
                row=1,
                col=1,
            )


@dataclass
class TimelineSet:
    """Everything the page needs for the timeline: menu entries and one figure per pair."""

    picks: list[Pick]
    controllers: list[str]
    how: str
    figures: dict[str, go.Figure]  # key "i/j": picks[i] under controllers[j]
    many_cases: bool


def timelines(run: RunData) -> TimelineSet:
    picks, how = pick_requests(run)
    builder = TimelineBuilder(run)
    figures = {}
    for i, pick in enumerate(picks):
        why = f"picked: {', '.join(pick.reasons)}" if pick.reasons else ""
        for j, controller in enumerate(run.controllers):
            figures[f"{i}/{j}"] = builder.figure(pick, controller, why)
    return TimelineSet(picks, run.controllers, how, figures, builder.many_cases)

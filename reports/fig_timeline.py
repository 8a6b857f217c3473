"""Per-request timeline: bandwidth over time, each chunk's transfer and GPU work, the deadline.

A report cannot hold a timeline for every request of a large run, so it keeps a documented
subset: per controller, its worst, median and best request by lateness (TTFT minus SLO), across
all cases, each shown under every controller. Runs with at most ALL_REQUESTS_LIMIT requests keep
them all. The page lets the reader pick the request and the controller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kvcast.reports.run_folder import RunData
from kvcast.reports.style import OTHER_COLOR, SLO_COLOR, Levels, levels_of

ALL_REQUESTS_LIMIT = 12
BANDWIDTH_POINTS = 1000  # most bandwidth samples one timeline draws (re-binned beyond)
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
    """Trace samples in [t0, t1], plus the sample in force at t0 (the trace is a step function).

    A window holding more than BANDWIDTH_POINTS samples (a long request in a finely sampled run)
    is re-binned to BANDWIDTH_POINTS equal bins, each the exact mean rate over its bin, so a
    figure carries no more points than it can show.
    """
    t = traces["t_s"].to_numpy()
    bw = traces["bandwidth_bps"].to_numpy()
    inside = (t >= t0) & (t <= t1)
    before = np.flatnonzero(t < t0)
    if len(before):
        inside[before[-1]] = True
    t, bw = t[inside], bw[inside]
    if len(t) <= BANDWIDTH_POINTS or not t1 > t0:
        return t, bw
    lo = max(t0, float(t[0]))
    knots = np.append(np.maximum(t, lo), t1)
    bits = np.concatenate([[0.0], np.cumsum(bw * np.diff(knots))])
    grid = np.linspace(lo, t1, BANDWIDTH_POINTS + 1)
    return grid[:-1], np.diff(np.interp(grid, knots, bits)) / np.diff(grid)


def _bw_unit(peak: float) -> tuple[str, float]:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if peak >= scale:
            return unit, scale
    return "bit/s", 1.0


class TimelineBuilder:
    """Builds timeline figures; indexes the run's tables once for many (request, controller)."""

    def __init__(self, run: RunData, cases: Sequence[str] | None = None) -> None:
        """`cases`: the only cases figures will be asked for (a study has millions of rows in
        others); None: every case."""
        self.run = run
        self.levels: Levels = levels_of(run)
        self.many_cases = len(run.cases) > 1
        requests, chunks = run.requests, run.chunks
        if cases is not None:
            requests = requests[requests["case"].isin(cases)]
            chunks = chunks[chunks["case"].isin(cases)]
        self.requests = requests.set_index(["case", "controller", "request_id"]).sort_index()
        self.chunks = chunks
        self.chunk_rows = chunks.groupby(["case", "controller"], sort=False).indices
        self.traces = {
            k: g.sort_values("t_s") for k, g in run.traces.groupby(["case", "trace"], sort=False)
        }

    def trace_samples(self, case: str, trace: str) -> tuple[str, pd.DataFrame | None]:
        """The request's trace samples, matched by (case, trace); None when the case has none
        (a per-chunk bandwidth link has no trace). load_run checks the names agree."""
        return trace, self.traces.get((case, trace))

    def figure(self, pick: Pick, controller: str, why: str) -> dict[str, Any]:
        """The timeline of one request under one controller, as a Plotly figure dict.

        Built as plain dicts, not graph objects: a report holds up to ~100 of these and
        graph-object validation would dominate the build time.
        """
        key = (pick.case, controller, pick.request_id)
        if key not in self.requests.index:
            text = f"{controller} has no request {pick.request_id} in case {pick.case}"
            return {
                "data": [],
                "layout": {
                    "height": 300,
                    "xaxis": {"visible": False},
                    "yaxis": {"visible": False},
                    "annotations": [{"text": text, "showarrow": False}],
                },
            }
        req = self.requests.loc[key]
        if isinstance(req, pd.DataFrame):
            req = req.iloc[0]
        rows = self.chunk_rows.get((pick.case, controller), np.empty(0, dtype=np.int64))
        all_chunks = self.chunks.iloc[rows].sort_values(["request_id", "chunk_index"])
        is_mine = (all_chunks["request_id"] == pick.request_id).to_numpy()
        mine = all_chunks[is_mine]
        arrival = float(req["arrival_s"])
        ttft = float(req["ttft_s"])
        slo = float(req["slo_s"])
        last = float(mine["gpu_end_s"].max() - arrival) if len(mine) else 0.0
        span = max(slo, last, ttft if np.isfinite(ttft) else 0.0, 1e-3)
        lo, hi = -0.03 * span, 1.08 * span

        bw_trace, unit = self._bandwidth_trace(pick.case, str(req["trace"]), mine, arrival, lo, hi)
        data = [bw_trace]
        data += self._other_traces(all_chunks, ~is_mine, arrival, lo, hi)
        data += self._chunk_traces(mine, arrival)
        met = "met" if bool(req["met_slo"]) else "MISSED"
        title = (
            f"{controller} · request {pick.request_id}"
            + (f" · case {pick.case}" if self.many_cases else "")
            + f": TTFT {ttft:.3f} s, SLO {slo:g} s ({met}), quality {float(req['quality']):.4f}"
        )
        note = (
            f"arrived at t = {arrival:.3f} s; bars: link = transfer, GPU = decode "
            "(hatched: prefill of TEXT chunks); grey: other requests on the same link / GPU"
        )
        shapes, annotations = _marks(slo, ttft)
        layout = {
            "title": {
                "text": title,
                "subtitle": {
                    "text": note + (f"<br>{why}" if why else ""),
                    "font": {"size": 11, "color": "#555"},
                },
            },
            "barmode": "overlay",
            "height": 540,
            "hovermode": "closest",
            "margin": {"t": 115},
            "legend": {"title": {"text": "level"}, "traceorder": "normal"},
            "xaxis": {
                "domain": [0, 1],
                "anchor": "y",
                "matches": "x2",
                "showticklabels": False,
                "range": [lo, hi],
            },
            "xaxis2": {
                "domain": [0, 1],
                "anchor": "y2",
                "range": [lo, hi],
                "title": {"text": "time since the request arrived (s)"},
            },
            "yaxis": {
                "domain": [0.53, 1],
                "anchor": "x",
                "rangemode": "tozero",
                "title": {"text": f"bandwidth ({unit})"},
            },
            "yaxis2": {
                "domain": [0, 0.47],
                "anchor": "x2",
                "type": "category",
                "categoryorder": "array",
                "categoryarray": list(LANES),
                "range": [-0.6, len(LANES) - 0.4],
            },
            "shapes": shapes,
            "annotations": annotations,
        }
        return {"data": data, "layout": layout}

    def _bandwidth_trace(
        self,
        case: str,
        trace: str,
        chunks: pd.DataFrame,
        arrival: float,
        lo: float,
        hi: float,
    ) -> tuple[dict[str, Any], str]:
        name, samples = self.trace_samples(case, trace)
        if samples is not None:
            t, bw = _bandwidth(samples, arrival + lo, arrival + hi)
            if len(t):  # hold the last value to the right edge: the trace is a step function
                t, bw = np.append(t, arrival + hi), np.append(bw, bw[-1])
            label = f"bandwidth ({name})"
        else:
            # No trace samples (per-chunk bandwidth links): each transfer's achieved throughput.
            start = chunks["send_start_s"].to_numpy()
            end = chunks["arrive_s"].to_numpy()
            rate = 8 * chunks["bytes"].to_numpy() / np.maximum(end - start, 1e-12)
            t = np.column_stack([start, end]).ravel()
            bw = np.repeat(rate, 2)
            label = "per-chunk throughput (no trace samples)"
        unit, scale = _bw_unit(float(bw.max()) if len(bw) else 0.0)
        trace_dict = {
            "type": "scatter",
            "x": _r(np.clip(t - arrival, lo, None)),
            "y": _r(bw / scale),
            "xaxis": "x",
            "yaxis": "y",
            "mode": "lines",
            "line": {"shape": "hv", "color": "#1f77b4", "width": 1.5},
            "fill": "tozeroy",
            "fillcolor": "rgba(31,119,180,0.15)",
            "name": label,
            "legendgroup": "bandwidth",
            "hovertemplate": f"t %{{x:.3f}} s<br>%{{y:.3g}} {unit}<extra>{name}</extra>",
        }
        return trace_dict, unit

    def _other_traces(
        self, chunks: pd.DataFrame, others: np.ndarray, arrival: float, lo: float, hi: float
    ) -> list[dict[str, Any]]:
        t0, t1 = arrival + lo, arrival + hi
        out = []
        for lane, start_col, end_col in (
            ("link", "send_start_s", "arrive_s"),
            ("GPU", "gpu_start_s", "gpu_end_s"),
        ):
            s = chunks[start_col].to_numpy()
            e = chunks[end_col].to_numpy()
            keep = others & (e > t0) & (s < t1)
            s, e = _merge_intervals(s[keep], e[keep])
            if not len(s):
                continue
            out.append(
                {
                    "type": "bar",
                    "orientation": "h",
                    "xaxis": "x2",
                    "yaxis": "y2",
                    "y": [lane] * len(s),
                    "base": _r(s - arrival),
                    "x": _r(e - s),
                    "marker": {"color": OTHER_COLOR},
                    "width": 0.35,
                    "opacity": 0.7,
                    "name": "other requests",
                    "legendgroup": "others",
                    "showlegend": not out,
                    "hovertemplate": f"{lane} busy with other requests<br>from %{{base:.4f}} s "
                    "for %{x:.4f} s<extra></extra>",
                }
            )
        return out

    def _chunk_traces(self, chunks: pd.DataFrame, arrival: float) -> list[dict[str, Any]]:
        out = []
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
                    np.round(1e3 * transfer, 4),
                    np.round(1e3 * gpu, 4),
                    _estimate_text(part),
                ]
            ).tolist()
            kinds = part["gpu_kind"].tolist()
            n = len(part)
            base = np.concatenate([part["send_start_s"].to_numpy(), part["gpu_start_s"].to_numpy()])
            out.append(
                {
                    "type": "bar",
                    "orientation": "h",
                    "xaxis": "x2",
                    "yaxis": "y2",
                    "y": ["link"] * n + ["GPU"] * n,
                    "base": _r(base - arrival),
                    "x": _r(np.concatenate([transfer, gpu])),
                    "width": 0.6,
                    "marker": {
                        "color": self.levels.colors[level],
                        "line": {"color": "white", "width": 0.5},
                        "pattern": {
                            "shape": [""] * n + ["/" if k == "prefill" else "" for k in kinds],
                            "fgcolor": "white",
                            "fillmode": "overlay",  # hatching over the level's colour
                        },
                    },
                    "name": level,
                    "legendgroup": level,
                    "customdata": custom + custom,
                    "text": ["transfer"] * n + kinds,
                    "textposition": "none",
                    "hovertemplate": (
                        f"chunk %{{customdata[0]}} · level {level}<br>%{{text}} from %{{base:.4f}} s"
                        "<br>bytes %{customdata[1]:,.0f} (%{customdata[2]} tokens)"
                        "<br>transfer %{customdata[3]:.2f} ms"
                        "<br>GPU (decode/prefill) %{customdata[4]:.2f} ms"
                        "%{customdata[5]}<extra></extra>"
                    ),
                }
            )
        return out


def _estimate_text(part: pd.DataFrame) -> np.ndarray:
    """Why the level was chosen: the controller's estimate behind each chunk (empty where the
    controller gives none, e.g. a fixed level)."""
    bw = part["est_bandwidth_bps"].to_numpy(dtype=np.float64)
    ttft = part["est_ttft_s"].to_numpy(dtype=np.float64)
    p_on = part["p_on_time"].to_numpy(dtype=np.float64)
    out = []
    for b, t, p in zip(bw, ttft, p_on, strict=True):
        bits = []
        if np.isfinite(b):
            bits.append(f"expected link {b / 1e9:.3g} Gbit/s")
        if np.isfinite(t):
            bits.append(f"projected TTFT {t:.3f} s")
        if np.isfinite(p):
            bits.append(f"P(on time) {p:.0%}")
        out.append(("<br>why: " + ", ".join(bits)) if bits else "")
    return np.array(out, dtype=object)


def _r(values: np.ndarray) -> list[float]:
    """Times to microseconds (and rates to 6 digits) keep the embedded JSON short."""
    return np.round(np.asarray(values, dtype=np.float64), 6).tolist()


def _marks(slo: float, ttft: float) -> tuple[list[dict], list[dict]]:
    """The deadline (dashed red) and the first token (black) across both panels."""
    shapes = []
    for xref, yref in (("x", "y domain"), ("x2", "y2 domain")):
        line = {"type": "line", "xref": xref, "yref": yref, "y0": 0, "y1": 1}
        shapes.append(
            {**line, "x0": slo, "x1": slo, "line": {"color": SLO_COLOR, "dash": "dash", "width": 2}}
        )
        if np.isfinite(ttft):
            shapes.append(
                {**line, "x0": ttft, "x1": ttft, "line": {"color": "black", "width": 1.5}}
            )
    annotations = [
        {
            "x": slo,
            "y": 1,
            "xref": "x",
            "yref": "y domain",
            "text": "deadline",
            "showarrow": False,
            "font": {"color": SLO_COLOR},
            "xanchor": "left",
            "yanchor": "bottom",
        }
    ]
    if np.isfinite(ttft):
        annotations.append(
            {
                "x": ttft,
                "y": 0,
                "xref": "x2",
                "yref": "y2 domain",
                "text": "first token",
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "bottom",
            }
        )
    return shapes, annotations


@dataclass
class TimelineSet:
    """Everything the page needs for the timeline: menu entries and one figure per pair."""

    picks: list[Pick]
    controllers: list[str]
    how: str
    figures: dict[
        str, dict[str, Any]
    ]  # Plotly figure dicts; key "i/j": picks[i] under controllers[j]
    many_cases: bool


def timelines(run: RunData) -> TimelineSet:
    picks, how = pick_requests(run)
    builder = TimelineBuilder(run, sorted({p.case for p in picks}))
    figures = {}
    for i, pick in enumerate(picks):
        why = f"picked: {', '.join(pick.reasons)}" if pick.reasons else ""
        for j, controller in enumerate(run.controllers):
            figures[f"{i}/{j}"] = builder.figure(pick, controller, why)
    return TimelineSet(picks, run.controllers, how, figures, builder.many_cases)

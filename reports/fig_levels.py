"""Level choices as a heatmap (request x chunk), one panel per controller.

Up to MAX_ROWS requests every cell is one chunk. Beyond that, consecutive requests are grouped
into MAX_ROWS rows and each cell shows the most frequent level in its group; the figure says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvcast.reports.run_folder import RunData
from kvcast.reports.style import Levels, levels_of, subtitle

MAX_ROWS = 300


def _row_index(run: RunData) -> pd.DataFrame:
    """One row per (case, request_id), in case then request order, with its heatmap row number."""
    keys = run.requests[["case", "request_id"]].drop_duplicates()
    case_rank = {c: i for i, c in enumerate(run.cases)}
    keys = keys.assign(_case_rank=keys["case"].map(case_rank))
    keys = keys.sort_values(["_case_rank", "request_id"]).reset_index(drop=True)
    keys["row"] = np.arange(len(keys))
    return keys.drop(columns="_case_rank")


def _row_labels(keys: pd.DataFrame, many_cases: bool) -> list[str]:
    if many_cases:
        return [f"{c} · {r}" for c, r in zip(keys["case"], keys["request_id"], strict=True)]
    return [str(r) for r in keys["request_id"]]


def _discrete_scale(colors: list[str]) -> list[list]:
    """A stepwise colorscale: value i (of len(colors)) maps to colors[i] exactly."""
    n = len(colors)
    scale = []
    for i, color in enumerate(colors):
        scale += [[i / n, color], [(i + 1) / n, color]]
    return scale


def _cells(run: RunData, keys: pd.DataFrame, levels: Levels, bin_size: int) -> pd.DataFrame:
    """Per (controller, row bin, chunk): shown level, its share, chunk count, mean figures.

    Counted with one integer key per chunk and `np.bincount` over the (controller, bin, chunk)
    grid, so a study's millions of chunk rows cost a few arrays, not a grouped copy."""
    c = run.chunks
    # each chunk's heatmap row: keys are sorted by (case rank, request id), so one integer key
    # per (case, request) finds it by binary search; arrays are reused in place and dropped as
    # soon as they are used (a study has millions of chunks)
    case_rank = {case: i for i, case in enumerate(run.cases)}
    span = int(max(keys["request_id"].max(), c["request_id"].max())) + 1
    wanted = keys["case"].map(case_rank).to_numpy(np.int64) * span + keys["request_id"].to_numpy()
    codes, uniques = pd.factorize(c["case"])
    key = np.array([case_rank.get(u, -1) for u in uniques], dtype=np.int64)[codes]
    del codes
    unknown_case = key < 0
    key *= span
    key += c["request_id"].to_numpy(np.int64)
    at = np.minimum(np.searchsorted(wanted, key), len(wanted) - 1)
    ok = ~unknown_case & (wanted[at] == key)  # a chunk of no listed request has no row
    del unknown_case
    every = bool(ok.all())

    def kept(values: np.ndarray) -> np.ndarray:
        return values if every else values[ok]

    # key: (controller, row bin, chunk index) on a dense grid; the row bin of a chunk is its
    # request's row (keys' rows are numbered in their order) over the bin size
    ctrl, ctrl_names = pd.factorize(c["controller"])
    ci = c["chunk_index"].to_numpy(dtype=np.int64)
    n_b = int(at.max()) // bin_size + 1
    n_ci = int(ci.max()) + 1
    key[:] = ctrl
    key *= n_b
    at //= bin_size
    key += at
    del at, ctrl
    key *= n_ci
    key += ci
    key = kept(key)
    size = len(ctrl_names) * n_b * n_ci

    def total(values: Any) -> np.ndarray:
        return np.bincount(key, weights=kept(np.asarray(values, dtype=np.float64)), minlength=size)

    n = np.bincount(key, minlength=size)
    cells = np.flatnonzero(n)
    nn = n[cells].astype(np.float64)
    # levels in rung order, so the first most frequent is the better level on a tie
    lvl_names = sorted(pd.unique(c["level"]).tolist(), key=levels.rung)
    lvl = kept(pd.Categorical(c["level"], categories=lvl_names).codes.astype(np.int64))
    lvl += key * len(lvl_names)
    per_level = np.bincount(lvl, minlength=size * len(lvl_names)).reshape(size, len(lvl_names))
    del lvl
    modal = per_level[cells].argmax(axis=1)
    count = per_level[cells, modal]
    out = {
        "controller": np.asarray(ctrl_names, dtype=object)[cells // (n_b * n_ci)],
        "bin": (cells // n_ci) % n_b,
        "chunk_index": cells % n_ci,
        "n": n[cells],
        "bytes": total(c["bytes"])[cells] / nn,
        "transfer_ms": 1e3 * (total(c["arrive_s"]) - total(c["send_start_s"]))[cells] / nn,
        "gpu_ms": 1e3 * (total(c["gpu_end_s"]) - total(c["gpu_start_s"]))[cells] / nn,
        "prefill": total(c["gpu_kind"] == "prefill")[cells] / nn,
        "level": np.asarray(lvl_names, dtype=object)[modal],
        "count": count,
        "share": count / nn,
    }
    return pd.DataFrame(out)


def level_heatmap(run: RunData) -> go.Figure:
    levels = levels_of(run)
    keys = _row_index(run)
    n_rows = len(keys)
    bin_size = max(1, math.ceil(n_rows / MAX_ROWS))
    cells = _cells(run, keys, levels, bin_size)
    used = [lv for lv in levels.order if lv in set(cells["level"])]
    used_rung = {lv: i for i, lv in enumerate(used)}
    n_bins = math.ceil(n_rows / bin_size)
    n_cols = int(run.chunks["chunk_index"].max()) + 1 if len(run.chunks) else 1
    labels = _row_labels(keys, len(run.cases) > 1)
    if bin_size > 1:  # a group's label: its first and last request (unique, so rows stay apart)
        labels = [
            f"{labels[i]} – {labels[min(i + bin_size, n_rows) - 1]}"
            if min(i + bin_size, n_rows) - 1 > i
            else labels[i]
            for i in range(0, n_rows, bin_size)
        ]
    names = run.controllers
    fig = make_subplots(
        rows=1,
        cols=len(names),
        shared_yaxes=True,
        subplot_titles=names,
        horizontal_spacing=min(0.02, 0.2 / max(len(names), 1)),
    )
    scale = _discrete_scale([levels.colors[lv] for lv in used])
    for col, name in enumerate(names, start=1):
        part = cells[cells["controller"] == name]
        r = part["bin"].to_numpy(dtype=np.int64)
        c = part["chunk_index"].to_numpy(dtype=np.int64)
        z = np.full((n_bins, n_cols), np.nan, dtype=np.float32)
        z[r, c] = part["level"].map(used_rung).to_numpy(dtype=np.float32)
        text = np.full((n_bins, n_cols), "", dtype=object)
        text[r, c] = part["level"].to_numpy()
        custom = np.full((n_bins, n_cols, 6), np.nan, dtype=np.float32)
        custom[r, c] = part[["bytes", "transfer_ms", "gpu_ms", "share", "n", "prefill"]].to_numpy(
            dtype=np.float32
        )
        if bin_size == 1:
            hover = (
                f"{name} · request %{{y}} · chunk %{{x}}<br>level %{{text}}"
                "<br>bytes %{customdata[0]:,.0f}<br>transfer %{customdata[1]:.2f} ms"
                "<br>GPU %{customdata[2]:.2f} ms (prefill: %{customdata[5]:.0%})<extra></extra>"
            )
        else:
            hover = (
                f"{name} · row %{{y}} · chunk %{{x}}<br>most frequent level %{{text}} "
                "(%{customdata[3]:.0%} of %{customdata[4]:.0f} chunks)"
                "<br>mean bytes %{customdata[0]:,.0f}<br>mean transfer %{customdata[1]:.2f} ms"
                "<br>mean GPU %{customdata[2]:.2f} ms (prefill: %{customdata[5]:.0%})"
                "<extra></extra>"
            )
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=np.arange(n_cols),
                y=labels,
                text=text,
                customdata=custom,
                colorscale=scale,
                zmin=-0.5,
                zmax=len(used) - 0.5,
                showscale=col == len(names),
                colorbar={
                    "tickvals": list(range(len(used))),
                    "ticktext": used,
                    "title": {"text": "level"},
                },
                xgap=1 if n_cols <= 40 else 0,
                hovertemplate=hover,
                name=name,
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    longest = max((len(lab) for lab in labels), default=4)
    fig.update_xaxes(title={"text": "chunk"}, showgrid=False)
    fig.update_layout(
        title={"text": "Level choices (request × chunk)"},
        height=min(800, 210 + 16 * n_bins),
        margin={"t": 120, "l": min(240, 24 + 7 * longest)},  # room for the row labels
    )
    if bin_size == 1:
        note = f"every cell is one chunk of one of {n_rows:,} requests; colour = level"
    else:
        note = (
            f"aggregated: {n_rows:,} requests in {n_bins} rows of {bin_size} consecutive requests; "
            "colour = the most frequent level in the row's chunks (hover: its share and means)"
        )
    subtitle(fig, note)
    return fig

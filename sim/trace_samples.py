"""Samples of a case's trace for the report's timelines (traces.parquet, docs/contracts.md)."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .scenario import Case

# Trace samples for the report's timelines (docs/contracts.md, traces.parquet). The report draws
# a request over [arrival - 3 %, arrival + 108 %] of max(SLO, TTFT) under one controller; each such
# window (every request under every controller) gets at least SPAN_BINS bins, none narrower than
# GRID_S, so a chunk's transfer shows; where windows overlap the finest wins, and OVERVIEW_BINS
# bins cover the rest of the run. Edges lie on a GRID_S grid (no sliver bins). A run holds at
# most about MAX_RUN_SAMPLES window samples, split evenly over its cases (bins widen evenly when a
# case needs more), so a 10,000-request run stays a few MB. Each value is the exact mean rate over
# its bin; a bin equal to the one before it is left out (the trace is a step function).
GRID_S = 1e-3
SPAN_BINS = 200
OVERVIEW_BINS = 2000
MAX_RUN_SAMPLES = 1_000_000
WINDOW_PAD = (0.03, 0.08)  # before / after a request's span, as fractions of it


def _request_windows(requests: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, bin width), in GRID_S units, of each (request, controller) window."""
    ttft = np.nan_to_num(requests["ttft_s"].to_numpy(dtype=np.float64), posinf=0.0)
    span = np.maximum(np.maximum(requests["slo_s"].to_numpy(dtype=np.float64), ttft), GRID_S)
    arrival = requests["arrival_s"].to_numpy(dtype=np.float64)
    start = np.floor((arrival - WINDOW_PAD[0] * span) / GRID_S).astype(np.int64)
    end = np.ceil((arrival + (1.0 + WINDOW_PAD[1]) * span) / GRID_S).astype(np.int64)
    step = np.maximum(np.floor(span / SPAN_BINS / GRID_S), 1).astype(np.int64)
    return np.maximum(start, 0), end, step


def _finest_steps(
    start: np.ndarray, end: np.ndarray, step: np.ndarray
) -> list[tuple[int, int, int]]:
    """Disjoint segments (a, b, step) where windows are open, each at its finest open window's
    step (a sweep over window starts and ends with a lazy-deletion heap)."""
    bounds = np.unique(np.concatenate([start, end]))
    order = np.argsort(start, kind="stable")
    heap: list[tuple[int, int]] = []  # (step, end)
    out: list[tuple[int, int, int]] = []
    j = 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        while j < len(order) and start[order[j]] <= a:
            i = order[j]
            heapq.heappush(heap, (int(step[i]), int(end[i])))
            j += 1
        while heap and heap[0][1] <= a:
            heapq.heappop(heap)
        if heap:
            k = heap[0][0]
            if out and out[-1][1] == a and out[-1][2] == k:
                out[-1] = (out[-1][0], b, k)
            else:
                out.append((a, b, k))
    return out


def trace_samples(case: Case, trace: Any, requests: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Samples of the case's trace over the run, fine inside every request's window."""
    start, end, step = _request_windows(requests)
    last = max(int(end.max()), 1)
    segments = _finest_steps(start, end, step)
    widen = max(1.0, sum((b - a) / k for a, b, k in segments) / budget)
    parts = [np.arange(0, last, max(1, -(-last // OVERVIEW_BINS))), np.array([last])]
    parts += [np.arange(a, b, max(1, int(np.ceil(k * widen)))) for a, b, k in segments]
    edges = np.unique(np.concatenate(parts)) * GRID_S
    bps = np.diff(trace.cum_bytes(edges)) * 8.0 / np.diff(edges)
    keep = np.ones(len(bps), dtype=bool)
    keep[1:] = ~np.isclose(bps[1:], bps[:-1], rtol=1e-9, atol=0.0)
    return pd.DataFrame(
        {
            "case": case.label,
            "trace": case.trace_name,
            "t_s": edges[:-1][keep],
            "bandwidth_bps": bps[keep],
        }
    )


def run_trace_samples(
    cases: Sequence[Case], traces: Mapping[str, Any], requests: pd.DataFrame
) -> pd.DataFrame:
    """traces.parquet of a run: each trace-driven case's samples (from its requests under every
    controller), the run's MAX_RUN_SAMPLES split evenly over its cases."""
    rows = requests.groupby("case", sort=False).indices
    frames = [
        trace_samples(
            case,
            traces[case.trace],
            requests.iloc[rows[case.label]],
            MAX_RUN_SAMPLES // len(cases),
        )
        for case in cases
        if case.trace in traces
    ]
    if frames:
        return pd.concat(frames, ignore_index=True)
    return pd.DataFrame(
        {
            "case": pd.Series(dtype="int64"),
            "trace": pd.Series(dtype="str"),
            "t_s": pd.Series(dtype="float64"),
            "bandwidth_bps": pd.Series(dtype="float64"),
        }
    )

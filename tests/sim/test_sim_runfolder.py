"""The run folder as the report reads it: trace names agree across tables, trace samples resolve
every request's window (and stay bounded), and `kvcast compare` keeps every scenario's cases and
traces apart. Runs tiny scenarios through `kvcast run` / `kvcast compare` (TEST DATA profile)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sim_support import scenario_doc, tiny_profile_doc, write_profile, write_scenario

from kvcast.cli import main
from kvcast.reports.run_folder import load_run
from kvcast.traces.readers import load_trace

CONTROLLERS = ["cachegen", "bba", "oracle"]


@pytest.fixture
def prof(tmp_path: Path) -> Path:
    return write_profile(tmp_path, tiny_profile_doc(samples=True))


def _busy_trace(path: Path, seed: int = 0, seconds: float = 4.0) -> Path:
    """A CSV trace whose rate changes every millisecond (TEST DATA), so no sample is redundant."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 1000)
    mbps = rng.uniform(200.0, 2000.0, n)
    rows = "\n".join(f"{i / 1000:.3f},{m:.3f}" for i, m in enumerate(mbps))
    path.write_text("time_s,mbps\n" + rows + "\n", encoding="utf-8")
    return path


def _doc(prof: Path, trace: Path, **over) -> dict:
    return scenario_doc(
        prof,
        controllers=CONTROLLERS,
        link={"trace": str(trace), "mean_gbps": 0.5, "delay_s": 0.001},
        **over,
    )


def _run(tmp_path: Path, scenario: Path, out: str) -> Path:
    args = ["run", str(scenario), "--out", str(tmp_path / out), "--quiet", "--no-report"]
    assert main(args) == 0
    return tmp_path / out


def test_trace_name_is_the_same_in_every_table(tmp_path: Path, prof: Path) -> None:
    """A scaled trace (mean_gbps) keeps its file name in requests, traces and summary."""
    trace = _busy_trace(tmp_path / "busy.csv")
    run = _run(tmp_path, write_scenario(tmp_path, _doc(prof, trace)), "r")
    req = pd.read_parquet(run / "requests.parquet")
    tr = pd.read_parquet(run / "traces.parquet")
    summary = json.loads((run / "summary.json").read_text())
    assert set(req["trace"]) == set(tr["trace"]) == {"busy.csv"}
    assert [c["trace"] for c in summary["cases"]] == ["busy.csv"]
    assert set(zip(req["case"], req["trace"], strict=True)) == set(
        zip(tr["case"], tr["trace"], strict=True)
    )
    load_run(run)  # the report's own checks accept it


def test_trace_samples_resolve_each_request(tmp_path: Path, prof: Path) -> None:
    """Inside every request's window the bins are at most max(span / 200, 1 ms) wide, and the
    samples carry exactly the trace's bytes (each value is its bin's mean rate)."""
    trace = _busy_trace(tmp_path / "busy.csv")
    doc = _doc(prof, trace, slo_s=0.05)
    doc["workload"] = {
        **doc["workload"],
        "requests": 6,
        "arrival": {"process": "fixed", "interval_s": 0.7},
    }
    run = _run(tmp_path, write_scenario(tmp_path, doc), "r")
    req = pd.read_parquet(run / "requests.parquet")
    tr = pd.read_parquet(run / "traces.parquet").sort_values("t_s")
    t = tr["t_s"].to_numpy()
    for row in req.itertuples():
        span = max(row.slo_s, row.ttft_s)
        lo, hi = row.arrival_s, row.arrival_s + span
        inside = t[(t >= lo) & (t <= hi)]
        edges = np.concatenate([[t[t <= lo].max()], inside, [t[t > hi].min()]])
        assert np.diff(edges).max() <= max(span / 200, 1e-3) + 1e-9, (
            row.controller,
            row.request_id,
        )
    # the bins' mean rates integrate to the scaled trace's bytes
    scaled = 0.5e9 / load_trace(str(trace)).mean_bps()
    end = t[-1] + 1e-3
    got = np.sum(tr["bandwidth_bps"].to_numpy() * np.diff(np.append(t, end))) / 8
    want = scaled * load_trace(str(trace)).bytes_between(0.0, end)
    assert got == pytest.approx(want, rel=1e-9)


def test_trace_samples_are_bounded(tmp_path: Path, prof: Path, monkeypatch) -> None:
    """Past the run's sample budget the window bins widen evenly instead of growing the table."""
    import kvcast.sim.trace_samples as samples

    trace = _busy_trace(tmp_path / "busy.csv")
    doc = _doc(prof, trace, slo_s=0.2)
    doc["workload"] = {
        **doc["workload"],
        "requests": 8,
        "arrival": {"process": "fixed", "interval_s": 0.4},
    }
    sc = write_scenario(tmp_path, doc)
    full = len(pd.read_parquet(_run(tmp_path, sc, "full") / "traces.parquet"))
    monkeypatch.setattr(samples, "MAX_RUN_SAMPLES", 300)
    small = len(pd.read_parquet(_run(tmp_path, sc, "small") / "traces.parquet"))
    assert full > 1000 and small <= 300 + samples.OVERVIEW_BINS + 1 and small < full


def test_compare_keeps_every_scenarios_cases_and_traces(tmp_path: Path, prof: Path) -> None:
    a = write_scenario(
        tmp_path, {**_doc(prof, _busy_trace(tmp_path / "a.csv", 1)), "name": "one"}, "a.yaml"
    )
    b = write_scenario(
        tmp_path,
        {**_doc(prof, _busy_trace(tmp_path / "b.csv", 2), slo_s=[0.01, 0.02]), "name": "two"},
        "b.yaml",
    )
    out = tmp_path / "cmp"
    args = ["compare", str(a), str(b), "--out", str(out), "--quiet", "--no-report"]
    assert main(args) == 0
    req = pd.read_parquet(out / "requests.parquet")
    tr = pd.read_parquet(out / "traces.parquet")
    chunks = pd.read_parquet(out / "chunks.parquet")
    cases = {"one/case-0", "two/case-0", "two/case-1"}
    assert set(req["case"]) == set(tr["case"]) == set(chunks["case"]) == cases
    assert set(zip(tr["case"], tr["trace"], strict=True)) == {
        ("one/case-0", "a.csv"),
        ("two/case-0", "b.csv"),
        ("two/case-1", "b.csv"),
    }
    summary = json.loads((out / "summary.json").read_text())
    assert {c["case"] for c in summary["cases"]} == cases
    load_run(out)

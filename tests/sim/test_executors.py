"""Where a sweep's units run: tasks that keep a case's units together when there are cases
enough, and `kvcast bench sweep`, which runs one sweep on each executor configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_support import tiny_profile_doc, write_profile

from kvcast.cli import main
from kvcast.sim.executors import tasks_of


def test_a_cases_units_share_a_task_when_cases_keep_every_worker_busy() -> None:
    units = [(i, c) for i in range(8) for c in ("a", "b")]
    assert tasks_of(units, workers=2) == [[u] for u in units]  # 8 cases < 16 tasks per worker
    more = [(i, c) for i in range(32) for c in ("a", "b")]
    assert tasks_of(more, workers=2) == [[(i, "a"), (i, "b")] for i in range(32)]
    assert tasks_of(more, workers=4) == [[u] for u in more]  # balance first


def test_bench_sweep_reports_each_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prof = write_profile(tmp_path, tiny_profile_doc(samples=True))
    traces = []
    for i, mbps in enumerate((800, 3000)):
        trace = tmp_path / f"t{i}.csv"
        trace.write_text(f"time_s,mbps\n0,{mbps}\n1,{2 * mbps}\n", encoding="utf-8")
        traces.append(str(trace))
    out = tmp_path / "sweep.json"
    argv = ["bench", "sweep", "--profile", str(prof), "--traces", ",".join(traces)]
    argv += ["--requests", "3", "--controllers", "cachegen,bba,fixed:mid,oracle"]
    assert main([*argv, "--configs", "local:1,local:2", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert [(r["executor"], r["workers"]) for r in figures["runs"]] == [("local", 1), ("local", 2)]
    assert all(r["request_runs"] == 2 * 2 * 4 * 3 for r in figures["runs"])  # traces x SLOs x ...
    assert figures["runs"][1]["same_tables_as_first"] is True
    assert figures["speedup_1_to_2_workers"] > 0 and figures["ray_vs_local_2_workers"] is None
    assert "1 -> 2 local workers" in capsys.readouterr().out
    assert main([*argv, "--configs", "local:0"]) == 2
    assert "--configs: 'local:0': expected executor:workers" in capsys.readouterr().err


def test_a_worker_that_dies_stops_the_run_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (say by the kernel's OOM killer) loses its task: the run says so instead
    of waiting for it forever, and the units finished before are kept."""
    import os
    import signal

    from sim_support import scenario_doc, write_scenario

    import kvcast.sim.units as units
    from kvcast.sim.runner import run_scenario
    from kvcast.sim.scenario import load_scenario

    prof = write_profile(tmp_path, tiny_profile_doc(samples=True))
    sc = load_scenario(write_scenario(tmp_path, scenario_doc(prof, seed=[0, 1])))
    real = units.get_controller

    def get_controller(name, **params):
        if name == "bba":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(name, **params)

    monkeypatch.setattr(units, "get_controller", get_controller)
    parts = tmp_path / "parts"
    with pytest.raises(RuntimeError, match="a worker process died"):
        run_scenario(sc, workers=2, parts_dir=parts)
    assert list(parts.glob("*.requests.parquet"))  # what finished first is kept

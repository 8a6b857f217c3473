"""`kvcast run` as docs/scenarios.md shows it: overrides, errors, interrupts, run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sim_support import scenario_doc, tiny_profile_doc, write_profile

from kvcast.cli import main


def _scenario(tmp_path: Path, **over: object) -> Path:
    doc = scenario_doc(write_profile(tmp_path, tiny_profile_doc()), **over)
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_the_documented_example_runs_with_the_profile_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/scenarios.md: `kvcast run my.yaml --controllers cachegen,mpc --seed 1 --seed 2
    --profile path/to/profile.json`, on a file without `profile:`."""
    path = _scenario(tmp_path)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    profile = doc.pop("profile")
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = tmp_path / "run"
    argv = ["run", str(path), "--controllers", "cachegen,mpc", "--seed", "1", "--seed", "2"]
    assert main([*argv, "--profile", profile, "--out", str(out), "--quiet", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["controllers"]) == ["cachegen", "mpc", "oracle"]
    assert sorted({c["seed"] for c in summary["cases"]}) == [1, 2]
    # without --profile the same file names the missing field
    assert main([*argv, "--out", str(tmp_path / "r2"), "--quiet", "--no-report"]) == 2
    assert "field 'profile': required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (
            ["codec", "encode", "kv.safetensors", "--chunk-tokens", "0", "-o", "out"],
            "--chunk-tokens",
        ),
        (["profile", "--chunk-tokens", "-5"], "--chunk-tokens"),
        (["run", "quickstart", "--seed", "-1"], "--seed"),
        (["bench", "sim", "--requests", "many"], "--requests"),
    ],
)
def test_bad_numbers_are_refused_by_name_before_work_starts(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected an integer" in err
    assert "Traceback" not in err


def test_a_trace_that_never_delivers_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = tmp_path / "dead.csv"
    dead.write_text("time_s,mbps\n0,0\n1,0\n", encoding="utf-8")
    assert main(["traces", "show", str(dead), "-o", str(tmp_path / "t.html")]) == 2
    assert "dead.csv: the trace delivers no bytes at all" in capsys.readouterr().err
    live = tmp_path / "live.csv"
    live.write_text("time_s,mbps\n0,100\n1,100\n", encoding="utf-8")
    path = _scenario(tmp_path, link={"trace": [str(live), str(dead)]})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "my.yaml: field link.trace" in err and "dead.csv" in err
    assert not out.exists()  # refused before any case ran
    steps = {"synthetic": {"kind": "steps", "mbps": [0, 0], "durations_s": 1.0}}
    path = _scenario(tmp_path, link=steps)
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 2
    assert "field 'link.synthetic': the trace delivers no bytes" in capsys.readouterr().err


def test_rerunning_into_a_run_folder_replaces_its_data_and_its_stale_report(
    tmp_path: Path,
) -> None:
    path = _scenario(tmp_path, controllers=["cachegen", "oracle"])
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    assert (out / "report.html").is_file()
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report",
                 "--controllers", "bba"]) == 0  # fmt: skip
    assert not (out / "report.html").exists()  # it described the old data
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["controllers"]) == ["bba", "oracle"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_an_interrupted_write_leaves_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    def interrupted(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", interrupted)
    out = tmp_path / "run"
    path = _scenario(tmp_path, controllers=["cachegen", "oracle"])
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 130
    assert not out.exists()  # only the .partial folder, which no reader takes for a run


@pytest.mark.slow
def test_sigterm_stops_a_run_within_seconds_with_a_message(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    path = _scenario(tmp_path, workload={"requests": 20000, "context_tokens": 300})
    out = tmp_path / "run"
    kvcast = Path(sys.executable).parent / "kvcast"
    proc = subprocess.Popen([str(kvcast), "run", str(path), "--out", str(out), "--quiet"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(3.0)  # past start-up, inside the simulation
    assert proc.poll() is None
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.perf_counter() - t0 < 5.0
    assert proc.returncode == 130
    assert "kvcast: interrupted" in err and "Traceback" not in err
    assert not out.exists()


def test_a_profile_used_beyond_what_it_measured_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(
        tmp_path,
        chunk_tokens=150,  # the profile measured 100-token chunks
        workload={"requests": 2, "context_tokens": 3000},  # and prefill up to 1000 tokens
        controllers=["cachegen", "oracle"],
    )
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "warning: the codec profile" in printed and "100-token chunks" in printed
    assert "warning: contexts reach 3000 tokens" in printed
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["warnings"]) == 2
    assert "warning: contexts reach 3000 tokens" in (out / "report.html").read_text("utf-8")


def test_the_ray_executor_without_ray_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    path = _scenario(tmp_path, controllers=["cachegen", "oracle"])
    argv = ["run", str(path), "--out", str(tmp_path / "r"), "--quiet", "--executor", "ray"]
    assert main(argv) == 2
    assert "pip install 'kvcast[ray]'" in capsys.readouterr().err


def test_forked_workers_do_not_take_the_clis_sigterm_handler() -> None:
    """The pool stops its forked workers with SIGTERM; with the CLI's handler (SIGTERM as an
    interrupt) inherited, a worker stopped while exiting printed a KeyboardInterrupt traceback."""
    import multiprocessing
    import signal

    from kvcast.cli import _interrupt
    from kvcast.sim.executors import _worker_signals

    previous = signal.signal(signal.SIGTERM, _interrupt)  # as `kvcast` installs it
    try:
        with multiprocessing.get_context("fork").Pool(1, _worker_signals) as pool:
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
            assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)

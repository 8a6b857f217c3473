"""A run's finished units kept as Parquet parts: an interrupted run resumes without redoing them,
a failing unit does not lose the others, parts of another run are never mixed in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sim_support import overlapping_scenario_doc, tiny_profile_doc, write_profile, write_scenario

import kvcast.sim.runner as runner
import kvcast.sim.units as units
from kvcast.cli import main
from kvcast.errors import InputError
from kvcast.run_schema import staging_dir
from kvcast.sim.runner import UnitsFailed, run_scenario
from kvcast.sim.scenario import load_scenario


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    prof = write_profile(tmp_path, tiny_profile_doc(samples=True))
    doc = overlapping_scenario_doc(prof, controllers=["cachegen", "bba", "fixed:mid", "oracle"])
    return write_scenario(tmp_path, doc)


def _counting_units(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> list:
    """Record the units each run is asked to simulate; optionally interrupt after some."""
    asked: list = []
    real = runner.run_units

    def run_units(sc, setup, todo, *args, **kwargs):
        asked.append(list(todo))
        for n, outcome in enumerate(real(sc, setup, todo, *args, **kwargs)):
            if stop_after is not None and n == stop_after:
                raise KeyboardInterrupt
            yield outcome

    monkeypatch.setattr(runner, "run_units", run_units)
    return asked


def test_an_interrupted_run_resumes_without_redoing_finished_units(
    scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = load_scenario(scenario)
    whole = run_scenario(sc)
    parts = tmp_path / "parts"
    with monkeypatch.context() as m:
        _counting_units(m, stop_after=3)
        with pytest.raises(KeyboardInterrupt):
            run_scenario(sc, parts_dir=parts)
    asked = _counting_units(monkeypatch)
    resumed = run_scenario(sc, parts_dir=parts)
    assert len(asked[0]) == 2 * 4 - 3  # 2 cases x 4 controllers, 3 were finished
    pd.testing.assert_frame_equal(resumed.requests, whole.requests)
    pd.testing.assert_frame_equal(resumed.chunks, whole.chunks)
    pd.testing.assert_frame_equal(resumed.traces, whole.traces)
    assert resumed.summary["controllers"] == whole.summary["controllers"]


def test_parts_of_another_run_are_refused(scenario: Path, tmp_path: Path) -> None:
    sc = load_scenario(scenario)
    parts = tmp_path / "parts"
    run_scenario(sc, parts_dir=parts)
    with pytest.raises(InputError, match=r"parts: holds the finished units of a different run"):
        run_scenario(sc, controllers=["bba", "oracle"], parts_dir=parts)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_unit_keeps_the_others(
    scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Every other unit runs and is kept; the error names the failed unit; a second run (the
    failure fixed) simulates only what failed."""
    sc = load_scenario(scenario)
    real = units.get_controller

    def get_controller(name, **params):
        if name == "bba":
            raise InputError("bba is broken today")
        return real(name, **params)

    parts = tmp_path / "parts"
    with monkeypatch.context() as m:
        m.setattr(units, "get_controller", get_controller)
        with pytest.raises(UnitsFailed, match=r"2 of 8 unit\(s\) failed; case-0 .*bba is broken"):
            run_scenario(sc, parts_dir=parts, workers=workers)
    asked = _counting_units(monkeypatch)
    resumed = run_scenario(sc, parts_dir=parts)
    assert asked == [[(0, "bba"), (1, "bba")]]
    pd.testing.assert_frame_equal(resumed.requests, run_scenario(sc).requests)


def test_kvcast_run_resumes_into_the_same_folder(
    scenario: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "run"
    argv = ["run", str(scenario), "--out", str(out), "--quiet", "--no-report"]
    with monkeypatch.context() as m:
        _counting_units(m, stop_after=5)
        assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"--out {out}` resumes" in err and "interrupted" in err
    assert not out.exists() and (staging_dir(out) / "parts").is_dir()
    asked = _counting_units(monkeypatch)
    assert main(argv) == 0
    assert len(asked[0]) == 8 - 5
    assert not staging_dir(out).exists()  # the parts are in the tables now
    whole = tmp_path / "whole"
    assert main([*argv[:3], str(whole), *argv[4:]]) == 0
    for table in ("requests", "chunks", "traces"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / f"{table}.parquet"), pd.read_parquet(whole / f"{table}.parquet")
        )


def test_parts_without_their_record_or_damaged_are_refused_clearly(
    scenario: Path, tmp_path: Path
) -> None:
    sc = load_scenario(scenario)
    parts = tmp_path / "parts"
    run_scenario(sc, parts_dir=parts)
    damaged = sorted(parts.glob("*.requests.parquet"))[0]
    damaged.write_bytes(b"")  # e.g. a crash between a write and the disk
    with pytest.raises(InputError, match=r"requests.parquet: a damaged part .*remove it"):
        run_scenario(sc, parts_dir=parts)
    (parts / "run.json").unlink()
    with pytest.raises(InputError, match=r"holds parts but no run.json"):
        run_scenario(sc, parts_dir=parts)

"""The memory estimate of a run, and the refusal of runs that cannot fit (sim.limits)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvcast.cli import main
from kvcast.sim.limits import run_size
from kvcast.sim.scenario import load_scenario

SCENARIO = {
    "name": "limits",
    "seed": 0,
    "slo_s": 1.0,
    "model": "llama-3.1-8b",
    "gpu": "a100",
    "profile": "smollm2-135m-cpu",
    "chunk_tokens": 1500,
    "workload": {
        "requests": 3000,
        "arrival": {"process": "fixed", "interval_s": 2.0},
        "context_tokens": 9000,
    },
    "link": {"synthetic": {"kind": "constant", "mbps": 2000.0, "duration_s": 10.0}},
    "receiver": {"decode_melem_per_s": 20000},
    "controllers": ["cachegen", "text", "fixed:klt-mid", "oracle"],
}


def _write(tmp_path: Path, **workload: object) -> Path:
    doc = {**SCENARIO, "workload": {**SCENARIO["workload"], **workload}}
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_a_run_too_big_for_this_machine_is_refused_with_the_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, requests=1_000_000_000)
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "field 'workload.requests'" in err and "4,000,000,000 request-runs" in err
    assert "GiB are available" in err and "--no-memory-limit" in err
    assert not (tmp_path / "r").exists()


def test_the_estimate_counts_cases_controllers_requests_and_chunks(tmp_path: Path) -> None:
    sc = load_scenario(_write(tmp_path, requests=10, context_tokens={"uniform": [1000, 5000]}))
    size = run_size(sc)
    assert size.request_runs == 4 * 10
    assert size.chunk_rows == 40 * 2  # mean 3000 tokens: 2 chunks of 1500


@pytest.mark.slow
def test_the_estimate_is_close_to_the_measured_peak(tmp_path: Path) -> None:
    """Peak RSS of `kvcast run` in a child process, against the estimate (within 35%)."""
    path = _write(tmp_path)
    kvcast = str(Path(sys.executable).parent / "kvcast")
    probe = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    argv = [kvcast, "run", str(path), "--out", str(tmp_path / "r"), "--quiet", "--no-report"]
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(done.stdout.split()[-1]) * 1024  # Linux reports KiB
    estimate = run_size(load_scenario(path), parts_in_memory=False).bytes  # as `kvcast run`
    assert 0.65 < peak / estimate < 1.35, (peak, estimate)

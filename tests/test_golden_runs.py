"""Golden figures: shipped scenarios give the recorded tables and run-folder data, and the codec
encodes the recorded bytes, so a refactor cannot change a result unnoticed.

A change meant to alter results regenerates them (tests/golden/make_golden_runs.py) and says why.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kvcast.errors import InputError
from kvcast.sim.scenario import load_scenario

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location(
    "make_golden_runs", GOLDEN_DIR / "make_golden_runs.py"
)
golden_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_runs)
RECORDED = json.loads((GOLDEN_DIR / "runs.json").read_text(encoding="utf-8"))


def test_encoded_chunks_are_byte_identical() -> None:
    assert golden_runs.chunk_hashes() == RECORDED["encoded_chunks"]


@pytest.mark.slow
@pytest.mark.parametrize("case", golden_runs.CASES, ids=[c[0] for c in golden_runs.CASES])
def test_scenario_figures_are_the_recorded_ones(case: tuple[str, str, str], tmp_path: Path) -> None:
    name, scenario, controllers = case
    try:
        load_scenario(scenario)
    except InputError as exc:  # e.g. shared-link's mahimahi trace where no trace set is at hand
        pytest.skip(f"{scenario}: {exc}")
    kvcast = str(Path(sys.executable).parent / "kvcast")
    assert golden_runs.run_case(kvcast, scenario, controllers, tmp_path / name) == RECORDED[name]

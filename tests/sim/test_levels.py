"""What a run offers: expected quality per level, and the adaptive ladder (the frontier)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_support import scenario_doc, tiny_profile_doc, write_profile

from kvcast.errors import InputError
from kvcast.profile_format import profile_from_dict
from kvcast.sim.inputs import build_setup
from kvcast.sim.levels import adaptive_ladder, expected_quality
from kvcast.sim.runner import run_scenario
from kvcast.sim.scenario import scenario_from_dict

BITS = {"hi": 8.0, "mid": 4.0, "worse": 5.0, "lo": 2.0, "fp16": 16.0, "int8": 8.5}
QUALITY = {"hi": 1.02, "mid": 0.95, "lo": 0.8, "worse": 0.9, "fp16": 1.0, "int8": 0.999}


def _profile():  # type: ignore[no-untyped-def]
    return profile_from_dict(tiny_profile_doc(bits=BITS, quality=QUALITY))


def test_expected_quality_never_above_lossless() -> None:
    q = expected_quality(_profile())
    assert q["hi"] == 1.0 and q["mid"] == 0.95 and q["TEXT"] == 1.0


def test_ladder_is_the_size_quality_frontier_largest_first() -> None:
    p = _profile()
    # 'worse' is larger than mid and no better; int8 and fp16 are larger than hi and no better
    assert adaptive_ladder(p) == ("hi", "mid", "lo")
    assert adaptive_ladder(p, ["int8", "mid", "worse"]) == ("int8", "mid")
    with pytest.raises(InputError, match="levels: level\\(s\\) nope not in codec profile"):
        adaptive_ladder(p, ["nope"])


def test_scenario_levels_and_fixed_levels_are_checked(tmp_path: Path) -> None:
    prof = write_profile(tmp_path, tiny_profile_doc(bits=BITS, quality=QUALITY))
    sc = scenario_from_dict(
        scenario_doc(prof, levels=["mid", "lo"], controllers=["bba", "fixed:hi"]),
        source="t.yaml",
        base_dir=tmp_path,
    )
    assert build_setup(sc).ladder == ("mid", "lo")
    res = run_scenario(sc)
    used = set(res.chunks[res.chunks.controller == "bba"].level)
    assert used <= {"mid", "lo"}
    assert res.summary["ladder"] == ["mid", "lo"]
    bad = scenario_from_dict(
        scenario_doc(prof, levels=["mid", "nope"]), source="t.yaml", base_dir=tmp_path
    )
    with pytest.raises(InputError, match="t.yaml: field 'levels'.*nope"):
        build_setup(bad)
    with pytest.raises(InputError, match="field 'levels\\[0\\]'"):
        scenario_from_dict(scenario_doc(prof, levels=["TEXT"]), source="t.yaml", base_dir=tmp_path)
    unknown = scenario_from_dict(
        scenario_doc(prof, controllers=["fixed:nope"]), source="t.yaml", base_dir=tmp_path
    )
    with pytest.raises(InputError, match="t.yaml: field 'controllers\\[0\\]'.*no level 'nope'"):
        build_setup(unknown)

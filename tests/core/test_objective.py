"""The one objective: a request's utility from its quality, TTFT and SLO, and its settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sim_support import scenario_doc, tiny_profile_doc, write_profile

from kvcast.errors import InputError
from kvcast.objective import Objective, display_name, objective_from_dict
from kvcast.sim.scenario import scenario_from_dict


def test_default_scores_late_requests_zero() -> None:
    o = Objective()
    assert o.utility(0.97, 0.8, 1.0) == 0.97
    assert o.utility(0.97, 1.0 + 1e-12, 1.0) == 0.97  # float noise on the deadline is on time
    assert o.utility(0.97, 1.01, 1.0) == 0.0
    assert o.utility(0.97, np.inf, 1.0) == 0.0  # never got a first token
    assert o.late_is_worthless
    assert "else 0" in o.describe()


def test_late_weight_and_penalty() -> None:
    o = Objective(late_quality_weight=0.5, late_penalty_per_slo=0.2)
    # late by half the SLO: 0.5 x 0.9 - 0.2 x 0.5
    assert o.utility(0.9, 1.5, 1.0) == pytest.approx(0.35)
    u = o.utilities(np.array([0.9, 0.9, 0.9]), np.array([0.5, 1.5, 3.0]), 1.0)
    assert u.tolist() == pytest.approx([0.9, 0.35, 0.05])
    assert np.all(np.diff(u) <= 0)  # later is never better
    assert not o.late_is_worthless
    assert "0.5 x quality" in o.describe() and "0.2 x lateness" in o.describe()


def test_objective_settings_are_checked(tmp_path: Path) -> None:
    assert objective_from_dict(None) == Objective()
    assert objective_from_dict({"late_penalty_per_slo": 1}) == Objective(0.0, 1.0)
    with pytest.raises(InputError, match="unknown key.*late_value"):
        objective_from_dict({"late_value": 1})
    with pytest.raises(InputError, match="late_quality_weight.*\\[0, 1\\]"):
        objective_from_dict({"late_quality_weight": 2})
    with pytest.raises(InputError, match="expected a number"):
        objective_from_dict({"late_penalty_per_slo": "high"})
    prof = write_profile(tmp_path, tiny_profile_doc())
    with pytest.raises(InputError, match="t.yaml: field 'objective'.*late_penalty_per_slo"):
        scenario_from_dict(
            scenario_doc(prof, objective={"late_penalty_per_slo": -1}),
            source="t.yaml",
            base_dir=tmp_path,
        )


def test_bound_is_labelled() -> None:
    assert display_name("oracle") == "oracle (bound)"
    assert display_name("lte/oracle") == "lte/oracle (bound)"
    assert display_name("mpc") == "mpc"

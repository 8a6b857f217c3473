"""The bound is a bound: it equals the best of every plan (brute force) and no controller beats it
on any request, whether requests run one at a time or share the link and the GPU."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sim_support import scenario_doc, tiny_profile_doc, with_reductions, write_profile

from kvcast.controllers.base import TEXT, Decision, Observation
from kvcast.controllers.registry import get_controller
from kvcast.objective import Objective
from kvcast.sim.engine import simulate
from kvcast.sim.inputs import build_setup, case_inputs
from kvcast.sim.runner import run_scenario
from kvcast.sim.scenario import scenario_from_dict
from kvcast.sim.units import run_controller

ALL = ["cachegen", "cachegen-artifact", "bba", "mpc", "stochastic", "fixed:mid", "text", "int8"]


class _Plan:
    """Sends a request's chunks as a given plan (test helper: one point of the brute force)."""

    name = "plan"

    def __init__(self, plan: tuple[str, ...]) -> None:
        self.plan = plan

    def reset(self, request_id: int) -> None:
        pass

    def choose(self, obs: Observation) -> Decision:
        return Decision(self.plan[obs.chunk_index])


def _link(kind: str, rng: np.random.Generator, ack_delay_s: float = 0.0) -> dict:
    if kind == "per_chunk":
        return {"kind": "per_chunk", "low_gbps": 0.05, "high_gbps": 2.0, "ack_delay_s": ack_delay_s}
    return {
        "synthetic": {
            "kind": "steps",
            "mbps": [float(x) for x in rng.uniform(0, 1500, 24)],
            "durations_s": 0.0004,
        },
        "delay_s": 0.0001,
        "ack_delay_s": ack_delay_s,
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("link", "objective", "ack"),
    [
        ("per_chunk", {}, 0.0),
        ("trace", {}, 0.0),
        ("trace", {"late_quality_weight": 0.5, "late_penalty_per_slo": 0.2}, 0.0),
        ("trace", {}, 0.0003),  # the sender learns of each arrival later (emulated links)
    ],
)
def test_oracle_equals_brute_force(tmp_path: Path, link: str, objective: dict, ack: float) -> None:
    """3-4 chunks x every profile level and TEXT: the oracle's utility is the best plan's."""
    rng = np.random.default_rng(7)
    prof = write_profile(tmp_path, tiny_profile_doc(samples=True))
    doc = scenario_doc(
        prof,
        slo_s=[0.003, 0.006],
        workload={
            "requests": 3,
            "arrival": {"process": "fixed", "interval_s": 1.0},
            "context_tokens": {"choice": [300, 350, 400]},
        },
        link=_link(link, rng, ack),
        receiver={"decode_melem_per_s": 300.0},
        objective=objective,
        controllers=["oracle"],
    )
    sc = scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path)
    setup = build_setup(sc)
    options = [*setup.profile.level_names, TEXT]
    checked = 0
    for case in sc.cases():
        ci = case_inputs(sc, setup, case)
        bound = run_controller(sc, setup, ci, get_controller("oracle"))
        for req, rc, got in zip(ci.requests, ci.costs, bound.requests, strict=True):
            best = -np.inf
            for plan in itertools.product(options, repeat=rc.n_chunks):
                res = simulate(
                    [req],
                    [rc],
                    _Plan(plan),
                    ci.make_path,
                    setup.ladder,
                    objective=sc.objective,
                    ack_delay_s=sc.link.ack_delay_s,
                )
                best = max(best, res.requests[0].utility)
            assert got.utility == pytest.approx(best, abs=1e-12), (case, req.request_id)
            checked += 1
    assert checked == 6


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_no_controller_beats_the_bound(tmp_path: Path, seed: int, shared: bool) -> None:
    """Per request, every controller's utility is at most the bound's, also when requests overlap
    on the link and the GPU (Poisson arrivals far faster than a request takes)."""
    rng = np.random.default_rng(seed)
    # with context-reduction levels: importance-first streaming, pruned text, tiers as levels
    prof = write_profile(tmp_path, with_reductions(tiny_profile_doc(samples=True), samples=True))
    arrival = (
        {"process": "poisson", "rate_per_s": 2000.0}
        if shared
        else {"process": "fixed", "interval_s": 5.0}
    )
    doc = scenario_doc(
        prof,
        seed=seed,
        slo_s=[0.002, 0.004, 0.2],
        workload={
            "requests": 8,
            "arrival": arrival,
            "context_tokens": {"uniform": [150, 500]},
            "per_chunk_overhead_s": 0.0001 * (seed % 3),
        },
        link=_link("per_chunk" if seed % 2 == 0 else "trace", rng, 0.0002 * (seed >= 2)),
        receiver={"decode_melem_per_s": 500.0},
        controllers=[*ALL, "importance:mid", "fixed:lingua-50"],
        objective={"late_penalty_per_slo": 0.1} if seed == 3 else {},
    )
    res = run_scenario(scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path))
    r = res.requests
    bound = r[r.controller == "oracle"].set_index(["case", "request_id"])["utility"]
    others = r[r.controller != "oracle"]
    over = (
        others["utility"].to_numpy()
        - bound.loc[list(zip(others["case"], others["request_id"], strict=True))].to_numpy()
    )
    assert over.max() <= 1e-9, others[over > 1e-9][["controller", "case", "request_id"]]
    # and the bound is tight somewhere: it is at least the best controller's mean
    assert bound.mean() >= others.groupby("controller")["utility"].mean().max()


def test_mpc_projects_the_simulated_ttft_given_the_true_bandwidth(tmp_path: Path) -> None:
    """On a constant link whose rate mpc knows (as its prior and from exact samples), the TTFT it
    projects at every decision is the one the simulator then produces."""
    prof = write_profile(tmp_path, tiny_profile_doc())
    doc = scenario_doc(
        prof,
        slo_s=0.003,
        workload={
            "requests": 4,
            "arrival": {"process": "fixed", "interval_s": 1.0},
            "context_tokens": 450,
            "per_chunk_overhead_s": 0.0001,
        },
        link={"kind": "per_chunk", "low_gbps": 1.0, "high_gbps": 1.0, "delay_s": 0.0002},
        receiver={"decode_melem_per_s": 200.0},
        controllers=["mpc"],
        controller_params={"mpc": {"initial_throughput_bps": 1e9}},
    )
    res = run_scenario(scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path))
    ch = res.chunks[res.chunks.controller == "mpc"]
    req = res.requests[res.requests.controller == "mpc"].set_index("request_id")
    assert len(ch) == 4 * 5
    for row in ch.itertuples():
        assert row.est_ttft_s == pytest.approx(req.loc[row.request_id, "ttft_s"], rel=1e-9)


def test_objective_reaches_the_bound(tmp_path: Path) -> None:
    """The summary's utility_vs_bound is each controller's mean utility over the bound's."""
    prof = write_profile(tmp_path, tiny_profile_doc())
    sc = scenario_from_dict(
        scenario_doc(prof, controllers=["fixed:lo", "text"]), source="t.yaml", base_dir=tmp_path
    )
    sc = replace(sc, objective=Objective())
    res = run_scenario(sc)
    per = res.summary["controllers"]
    assert per["oracle"]["utility_vs_bound"] == 1.0
    for name in ("fixed:lo", "text"):
        assert per[name]["utility_vs_bound"] == pytest.approx(
            per[name]["mean_utility"] / per["oracle"]["mean_utility"]
        )


def test_the_oracle_drops_options_that_are_never_better() -> None:
    """Per chunk, an option with no fewer bytes, no less GPU work and no more quality than
    another cannot be in a better plan; of identical options the first stays."""
    from kvcast.controllers.oracle import _useful_options

    size = np.array([100.0, 120.0, 100.0, 50.0, 100.0])
    work = np.array([1.0, 1.0, 1.0, 3.0, 0.5])
    gain = np.array([0.9, 0.9, 0.9, 1.0, 0.8])
    # 1: larger than 0, same work and quality; 2: identical to 0; 3 (TEXT-like: few bytes, more
    # work, best quality) and 4 (faster to decode, lower quality) are each best at something
    assert _useful_options(size, work, gain).tolist() == [0, 3, 4]

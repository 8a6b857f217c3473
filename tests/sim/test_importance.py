"""Importance-first streaming and context-reduction levels in the simulator: hand-checked
TTFTs and qualities at the deadline, the bound's computation of the same rule, pruned-text
costs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sim_support import (
    profile_coster,
    scenario_doc,
    tiny_profile_doc,
    with_reductions,
    write_profile,
)

from kvcast.controllers.registry import get_controller
from kvcast.errors import InputError
from kvcast.sim.engine import Request, simulate
from kvcast.sim.inputs import build_setup
from kvcast.sim.network import PerChunkPath
from kvcast.sim.receiver import MeasuredPrefill
from kvcast.sim.runner import run_scenario
from kvcast.sim.scenario import scenario_from_dict


def _costs(n_tokens: int = 300):
    prof, coster = profile_coster(with_reductions(tiny_profile_doc()))
    return prof, coster.request_costs(n_tokens, np.random.default_rng(0))


def _sent(res) -> list:  # noqa: ANN001
    """A run's part rows in send order (the tables list them by chunk, then tier)."""
    return sorted(res.chunks, key=lambda c: c.send_start_s)


def _run(slo: float, controller: str = "importance:mid", bws: list[float] | None = None):
    prof, rc = _costs()
    bws = bws or [1e9] * rc.n_chunks
    return simulate(
        [Request(0, 0.0, 300, slo)],
        [rc],
        get_controller(controller),
        lambda env: PerChunkPath(env, [bws], 0.0),
        prof.ladder,
    )


# 3 chunks of 100 tokens x 1000 elements; mid = 4 bits, 1000 Melem/s. Tiers: 12,500 B (0.1 ms at
# 1 Gbit/s) then 12,500 B then 25,000 B per chunk; decode work 0.025, 0.025, 0.05 ms per chunk.
# Arrivals: tier 1 at 0.1, 0.2, 0.3 ms; tier 2 at 0.4, 0.5, 0.6; tier 3 at 0.8, 1.0, 1.2 ms.
# First-token step: 1 ms (1 token at 1000 tokens/s).


def test_every_tier_in_before_the_deadline() -> None:
    res = _run(slo=0.010)
    r = res.requests[0]
    assert r.ttft_s == pytest.approx(0.00125 + 0.001, abs=1e-12)
    assert r.quality == pytest.approx(0.95) and r.met_slo
    sent = _sent(res)
    assert [c.arrive_s for c in sent] == pytest.approx(
        [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 8e-4, 1e-3, 1.2e-3]
    )
    assert [c.level for c in sent] == ["h2o-25+mid"] * 3 + ["h2o-50+mid"] * 3 + ["h2o-100+mid"] * 3
    assert [c.chunk_index for c in sent] == [0, 1, 2] * 3
    assert [c.tokens for c in sent] == [25] * 3 + [25] * 3 + [50] * 3  # what each part carries
    assert r.bytes_sent == 3 * 50_000


def test_the_receiver_proceeds_at_the_deadline_with_the_tiers_decoded() -> None:
    # deadline 1.75 - 1 = 0.75 ms: tiers 1 and 2 decoded (last at 0.625 ms); tier 3's first part,
    # on the wire since 0.6 ms, arrives at 0.8 ms: too late, dropped (and nothing more is sent)
    res = _run(slo=0.00175)
    r = res.requests[0]
    assert r.ttft_s == pytest.approx(0.00175, abs=1e-12) and r.met_slo
    assert r.quality == pytest.approx(0.92)
    sent = _sent(res)
    assert [c.gpu_kind for c in sent] == ["decode"] * 6 + ["dropped"]
    assert sent[-1].arrive_s == pytest.approx(0.0008)
    assert r.bytes_sent == 6 * 12_500 + 25_000


def test_a_late_first_tier_is_waited_for() -> None:
    # deadline 0.2 ms, but tier 1 is decoded only at 0.325 ms: proceed then, with tier 1 alone
    res = _run(slo=0.0012)
    r = res.requests[0]
    assert r.ttft_s == pytest.approx(0.000325 + 0.001, abs=1e-12) and not r.met_slo
    assert r.quality == pytest.approx(0.85)


def test_parts_that_cannot_be_decoded_by_the_deadline_are_skipped() -> None:
    # a slow GPU: tier 1 takes 12.5 ms per chunk (100,000 elements at 8 Melem/s), done at
    # 37.6 ms; a tier-2 part would take 12.5 ms more, past the deadline (39 ms): skipped, and the
    # receiver proceeds at the deadline with tier 1
    prof, coster = profile_coster(with_reductions(tiny_profile_doc(decode_melem_per_s=2.0)))
    rc = coster.request_costs(300, np.random.default_rng(0))
    res = simulate(
        [Request(0, 0.0, 300, 0.040)],
        [rc],
        get_controller("importance:mid"),
        lambda env: PerChunkPath(env, [[1e9] * 3], 0.0),
        prof.ladder,
    )
    r = res.requests[0]
    assert r.quality == pytest.approx(0.85)
    assert r.ttft_s == pytest.approx(0.040, abs=1e-12) and r.met_slo
    sent = _sent(res)
    assert [c.gpu_kind for c in sent] == ["decode"] * 3 + ["skipped"] * 6
    assert sent[2].gpu_end_s == pytest.approx(0.0001 + 3 * 0.0125)


@pytest.mark.parametrize("seed", range(6))
def test_the_bound_computes_what_the_simulator_does(seed: int) -> None:
    """`importance_outcome` (what the oracle weighs) equals the simulated request, alone."""
    from kvcast.controllers.base import LinkHistory, Observation
    from kvcast.controllers.importance import importance_outcome
    from kvcast.objective import Objective

    rng = np.random.default_rng(seed)
    prof, rc = _costs()
    bws = list(rng.uniform(0.05e9, 2e9, size=rc.n_chunks))
    slo = float(rng.uniform(0.0008, 0.004))
    res = _run(slo, bws=bws)
    obs = Observation(
        now_s=0.0, request_id=0, chunk_index=0, n_chunks=rc.n_chunks, slo_s=slo, elapsed_s=0.0,
        budget_left_s=slo, levels=prof.ladder, quality=rc.quality, next_sizes=rc.sizes,
        text_time_s=rc.text_s, decode_time_s=rc.decode_s, past_throughputs_bps=(),
        past_transfer_times_s=(), gpu_queue_s=0.0, text_sizes=rc.text_sizes,
        chunk_tokens=rc.tokens, decode_step_s=rc.decode_step_s, per_chunk_overhead_s=0.0,
        request_tokens=300, quality_so_far=0.0, link_delay_s=0.0, ack_delay_s=0.0,
        link_history=LinkHistory(), other_transfers=0, objective=Objective(),
    )  # fmt: skip
    tiers = get_controller("importance:mid").importance_tiers
    end, quality = importance_outcome(obs, tiers, lambda i, b, t: b * 8 / bws[i])
    assert end == pytest.approx(res.requests[0].ttft_s, abs=1e-12)
    assert quality == pytest.approx(res.requests[0].quality)


def test_pruned_text_levels_cost_a_prefill_of_the_kept_tokens() -> None:
    prof, rc = _costs()
    assert rc.sizes["lingua-50"] == (200, 200, 200)  # 50 of 100 tokens x 4 bytes
    pre = MeasuredPrefill.from_profile(prof)
    assert rc.decode_s["lingua-50"] == pytest.approx(
        [pre.prefill_s(50, 0), pre.prefill_s(50, 100), pre.prefill_s(50, 200)]
    )
    res = _run(slo=1.0, controller="fixed:lingua-50")
    assert {c.gpu_kind for c in res.chunks} == {"prefill"}
    assert res.requests[0].quality == pytest.approx(0.6)


def test_importance_needs_its_tiers_in_the_profile(tmp_path: Path) -> None:
    prof = write_profile(tmp_path, tiny_profile_doc())
    doc = scenario_doc(prof, controllers=["importance:mid"])
    with pytest.raises(InputError, match=r"controllers\[0\].*h2o-25\+mid.*profile reduce"):
        build_setup(scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path))


def test_the_bound_streams_by_importance_where_that_is_worth_more(tmp_path: Path) -> None:
    """A slow GPU: per-chunk plans miss the SLO, importance-first meets it with tier 1; the
    oracle takes it too, and no controller beats the oracle."""
    doc = with_reductions(tiny_profile_doc(decode_melem_per_s=2.0))
    prof = write_profile(tmp_path, doc)
    sc = scenario_from_dict(
        scenario_doc(prof, slo_s=0.0395, controllers=["importance:mid", "fixed:mid", "oracle"]),
        source="t.yaml",
        base_dir=tmp_path,
    )
    r = run_scenario(sc).requests
    imp = r[r.controller == "importance:mid"]["utility"].to_numpy()
    bound = r[r.controller == "oracle"]["utility"].to_numpy()
    assert (imp > 0).all() and (bound >= imp - 1e-12).all()

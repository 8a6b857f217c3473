"""Each controller's rule, replayed on small hand-computed observations, and the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvcast.controllers.base import TEXT, LinkHistory, Observation
from kvcast.controllers.registry import get_controller, known_controllers
from kvcast.errors import InputError
from kvcast.objective import Objective

LEVELS = ("hi", "mid", "lo")  # the adaptive ladder: largest (best) first


def history(*samples_bps: float, t_s: float = -1.0) -> LinkHistory:
    h = LinkHistory()
    for i, bps in enumerate(samples_bps):
        h.add(t_s + 0.001 * i, bps)
    return h


def obs(**kw) -> Observation:  # type: ignore[no-untyped-def]
    """Two chunks of 100 tokens; hi/mid/lo are 1000/500/250 bytes per chunk, no decode cost, TEXT
    10 s per chunk, SLO 1 s, nothing spent yet."""
    n_left = kw.pop("n_left", 2)
    decode = kw.pop("decode_s", 0.0)
    base = dict(
        now_s=0.0,
        request_id=0,
        chunk_index=0,
        n_chunks=n_left,
        slo_s=1.0,
        elapsed_s=0.0,
        budget_left_s=1.0,
        levels=LEVELS,
        quality={"hi": 1.0, "mid": 0.9, "lo": 0.7, TEXT: 1.0},
        next_sizes={"hi": (1000,) * n_left, "mid": (500,) * n_left, "lo": (250,) * n_left},
        text_time_s=(10.0,) * n_left,
        decode_time_s={k: (decode,) * n_left for k in LEVELS},
        past_throughputs_bps=(),
        past_transfer_times_s=(),
        gpu_queue_s=0.0,
        text_sizes=(4,) * n_left,
        chunk_tokens=(100,) * n_left,
        request_tokens=100 * n_left,
    )
    base.update(kw)
    return Observation(**base)


def level(ctrl, o: Observation) -> str:  # type: ignore[no-untyped-def]
    return ctrl.choose(o).level


def test_cachegen_paper_rule_on_the_pipeline() -> None:
    c = get_controller("cachegen")
    # 8,000 bit/s: both chunks at hi need 2 s > 1 s; at mid 1.0 s: fits
    d = c.choose(obs(past_throughputs_bps=(8000.0,)))
    assert (d.level, d.est_bandwidth_bps, d.est_ttft_s) == ("mid", 8000.0, pytest.approx(1.0))
    assert level(c, obs(past_throughputs_bps=(16000.0,))) == "hi"
    # only the LAST throughput counts
    assert level(c, obs(past_throughputs_bps=(1e9, 8000.0))) == "mid"
    # decode counts: 0.1 s per chunk after it arrives -> mid ends at 1.1 s; lo at 0.6 s
    assert level(c, obs(past_throughputs_bps=(8000.0,), decode_s=0.1)) == "lo"
    # so does the final decode step (mid: 1.05 s)
    assert level(c, obs(past_throughputs_bps=(8000.0,), decode_step_s=0.05)) == "lo"
    # and the GPU queue: busy until 0.6 s still lets mid end at 1.0 s; until 1.2 s nothing fits
    assert level(c, obs(past_throughputs_bps=(8000.0,), gpu_queue_s=0.6)) == "mid"
    # and the one-way delay: 0.1 s per chunk -> mid ends at 1.2 s; lo at 0.7 s
    assert level(c, obs(past_throughputs_bps=(8000.0,), link_delay_s=0.1)) == "lo"


def later(**kw) -> Observation:  # type: ignore[no-untyped-def]
    """The last two chunks of a three-chunk request (its first was sent already)."""
    return obs(chunk_index=1, n_chunks=3, request_tokens=300, **kw)


def test_cachegen_text_and_nothing_fits() -> None:
    c = get_controller("cachegen")
    # recomputing this chunk (0.01 s) then mid ends at 0.504 s < 1.0 s at mid: TEXT
    assert level(c, later(past_throughputs_bps=(8000.0,), text_time_s=(0.01, 0.01))) == TEXT
    # 1,000 bit/s: nothing fits; lo ends at 4 s, TEXT + lo at 2.03 s: the earlier
    assert level(c, later(past_throughputs_bps=(1000.0,), text_time_s=(0.01, 0.01))) == TEXT
    assert level(c, later(past_throughputs_bps=(1000.0,))) == "lo"  # TEXT (10 s) is later
    # a request's first chunk is never TEXT: it measures the link
    assert level(c, obs(link_history=history(1000.0), text_time_s=(0.01, 0.01))) == "lo"


def test_cachegen_startup_estimate() -> None:
    c = get_controller("cachegen")
    # a request's first chunk: the link's last sample from earlier requests
    d = c.choose(obs(link_history=history(8000.0, 16000.0)))
    assert (d.level, d.est_bandwidth_bps) == ("hi", 16000.0)
    # a link never measured: the stated prior, and never TEXT (a KV chunk measures the link)
    assert get_controller("cachegen", initial_throughput_bps=16000.0).choose(obs()).level == "hi"
    d = c.choose(obs(text_time_s=(1e-6, 1e-6)))
    assert (d.level, d.est_bandwidth_bps) == ("hi", 1e9)


class _Fs:
    def __init__(self, bps: float) -> None:
        self.bps = bps

    def transfer_time_s(self, rid: int, i: int, nbytes: int, start: float) -> float:
        return nbytes * 8 / self.bps

    def transfer_times_s(self, rid, i, nbytes, start):  # type: ignore[no-untyped-def]
        return np.asarray(nbytes, dtype=float) * 8 / self.bps


def test_cachegen_artifact_rule_uses_true_bandwidth() -> None:
    c = get_controller("cachegen-artifact")
    c.bind_foresight(_Fs(10000.0))
    # share = 0.5 s; hi: 0.8 s, mid: 0.4 s < 0.5 -> mid
    assert level(c, obs()) == "mid"
    c.bind_foresight(_Fs(1000.0))  # lo takes 2 s: nothing fits -> TEXT
    assert level(c, obs()) == TEXT
    assert "future" in known_controllers()["cachegen-artifact"].lower()


def test_bba_maps_slack_to_the_frontier() -> None:
    c = get_controller("bba", reservoir=0.5, cushion=0.5)
    assert level(c, obs(budget_left_s=1.0)) == "hi"  # on pace: the largest level
    assert level(c, obs(budget_left_s=0.4)) == "lo"  # below reservoir: the smallest
    assert level(c, obs(budget_left_s=0.75)) == "mid"  # halfway through the cushion
    assert level(c, obs(budget_left_s=-1.0)) == "lo"


def test_mpc_prediction_and_plan() -> None:
    c = get_controller("mpc")
    c.reset(0)
    assert c.predict_bps((1000.0, 4000.0), 0) == pytest.approx(1600.0)  # harmonic mean
    # a new sample 800 while 1600 was predicted: error |1600-800|/800 = 1
    hm = 3 / (1 / 1000 + 1 / 4000 + 1 / 800)
    assert c.predict_bps((1000.0, 4000.0, 800.0), 0) == pytest.approx(hm / 2.0)
    # errors are per request (a session), samples are the link's
    c.reset(1)
    assert c.predict_bps((1000.0, 4000.0, 800.0), 1) == pytest.approx(hm)
    # a fast link: the best level; 8,000 bit/s: mid, projected exactly through the pipeline
    c.reset(2)
    assert level(c, obs(link_history=history(1e9))) == "hi"
    c.reset(3)
    d = c.choose(obs(request_id=3, link_history=history(8000.0)))
    assert (d.level, d.est_bandwidth_bps, d.est_ttft_s) == ("mid", 8000.0, pytest.approx(1.0))
    # decode on the GPU after arrival counts (0.1 s each): mid, mid ends at 1.1 s (late), so the
    # plan is mid then lo (chunk 1 arrives at 0.75 s, decoded by 0.85 s), as its estimate says
    c.reset(4)
    d = c.choose(obs(request_id=4, link_history=history(8000.0), decode_s=0.1))
    assert (d.level, d.est_ttft_s) == ("mid", pytest.approx(0.85))


def test_mpc_first_chunk_measures_the_link() -> None:
    c = get_controller("mpc", initial_throughput_bps=100.0)
    c.reset(0)
    # every KV plan is hopeless and TEXT would be earliest, but a request's first chunk is KV
    assert level(c, obs(link_history=history(100.0), text_time_s=(0.01, 0.01))) == "lo"
    c.reset(1)
    d = c.choose(later(request_id=1, link_history=history(100.0), text_time_s=(0.01, 0.01)))
    assert d.level == TEXT


def test_stochastic_on_a_steady_link_takes_the_best_level_that_fits() -> None:
    """A link that always gave 8,000 bit/s: every sampled future is (nearly) that, so the planner
    takes mid (1.0 s, on time), not hi (2 s), and is sure of it."""
    c = get_controller("stochastic")
    steady = history(*([8000.0] * 50), t_s=-0.5)
    d = c.choose(obs(link_history=steady, slo_s=1.02, budget_left_s=1.02))
    assert d.level == "mid"
    assert d.p_on_time == pytest.approx(1.0, abs=0.05)
    assert d.est_bandwidth_bps == pytest.approx(8000.0, rel=0.15)
    # twice as fast: hi fits
    fast = history(*([16000.0] * 50), t_s=-0.5)
    assert level(c, obs(link_history=fast, slo_s=1.02, budget_left_s=1.02)) == "hi"


def test_stochastic_is_deterministic_and_weighs_the_objective() -> None:
    h = history(*np.random.default_rng(0).lognormal(np.log(8000.0), 0.5, 60), t_s=-1.0)
    o = obs(link_history=h)
    a, b = get_controller("stochastic").choose(o), get_controller("stochastic").choose(o)
    assert a == b
    # a late answer still worth 90% of its quality: no reason to give up quality for time
    lenient = get_controller("stochastic").choose(
        obs(link_history=h, objective=Objective(late_quality_weight=0.9))
    )
    assert ["lo", "mid", "hi"].index(lenient.level) >= ["lo", "mid", "hi"].index(a.level)


def test_stochastic_chance_constraint() -> None:
    """With min_p_on_time the best quality whose chance of meeting the SLO is high enough."""
    h = history(*np.random.default_rng(1).lognormal(np.log(8000.0), 0.3, 80), t_s=-1.0)
    strict = get_controller("stochastic", min_p_on_time=0.99).choose(obs(link_history=h))
    assert strict.level == "lo"
    with pytest.raises(InputError, match="min_p_on_time"):
        get_controller("stochastic", min_p_on_time=1.5)


def test_fixed_and_registry_errors() -> None:
    assert level(get_controller("fixed:lo"), obs()) == "lo"
    assert level(get_controller("text"), obs()) == TEXT
    d = get_controller("text").choose(obs())
    assert math.isnan(d.est_ttft_s) and math.isnan(d.p_on_time)
    with pytest.raises(InputError, match="no level 'nope'"):
        get_controller("fixed:nope").choose(obs())
    with pytest.raises(InputError, match="unknown controller 'magic'"):
        get_controller("magic")
    with pytest.raises(InputError, match="needs an argument"):
        get_controller("fixed")
    with pytest.raises(InputError, match="unknown parameter"):
        get_controller("bba", buffer=3)
    with pytest.raises(InputError, match="takes no"):
        get_controller("bba:3")
    assert {"cachegen", "mpc", "bba", "stochastic", "oracle"} <= set(known_controllers())


def test_stochastic_hot_loop_is_the_pipeline() -> None:
    """The compiled projection `stochastic` runs on every future is `pipeline.finish_times`."""
    from kvcast.controllers.pipeline import finish_times
    from kvcast.controllers.stochastic import first_token_times

    rng = np.random.default_rng(0)
    bits = rng.uniform(1e3, 1e5, (7, 4))
    work = rng.uniform(0.0, 0.2, (7, 4))
    bw = rng.uniform(1e4, 1e6, (5, 4))
    none = np.empty(0)
    never = np.full(5, np.inf)
    fast = first_token_times(
        1.0, 1.3, 0.01, 0.02, 0.05, bits, work, bw, none, none, none, never, 0.0, 0.0
    )
    link = 0.02 + bits[:, None, :] / bw[None, :, :]
    slow = finish_times(1.0, 1.3, link, work[:, None, :], 0.01, 0.05)
    assert np.allclose(fast, slow, rtol=1e-12, atol=0)


def test_stochastic_projection_shares_link_and_gpu() -> None:
    """The requests a plan shares with: another request still sending shares the link fairly, a
    GPU job that reaches the FIFO GPU first goes first, and a request arriving meanwhile shares
    the link from its arrival on and queues its GPU work then."""
    from kvcast.controllers.stochastic import first_token_times

    none, never = np.empty(0), np.full(1, np.inf)
    bits = np.array([[1000.0, 1000.0]])  # two chunks of 1,000 bits on a 1,000 bit/s link
    work = np.array([[0.1, 0.1]])
    bw = np.full((1, 2), 1000.0)

    def end(**kw) -> float:  # type: ignore[no-untyped-def]
        args = dict(
            other_bits=none,
            other_release=none,
            other_work=none,
            new_t=never,
            new_bits=0.0,
            new_work=0.0,
        )
        args.update(kw)
        return float(first_token_times(0.0, 0.0, 0.0, 0.0, 0.0, bits, work, bw, **args)[0, 0])

    assert end() == pytest.approx(2.1)  # alone: 1 s + 1 s on the link, 0.1 s of decode
    # another request with 1,500 bits left: chunk 0 takes 2 s, chunk 1 1.5 s (500 of theirs)
    assert end(other_bits=np.array([1500.0])) == pytest.approx(3.6)
    # its 1 s GPU job reaches the GPU at 0.5 s, before chunk 0 (1 s): chunk 0 waits to 1.5 s
    assert end(other_release=np.array([0.5]), other_work=np.array([1.0])) == pytest.approx(2.1)
    assert end(other_release=np.array([1.5]), other_work=np.array([1.0])) == pytest.approx(2.6)
    # a request arriving at 0.5 s with 1,000 bits: half of chunk 0 and 500 bits of chunk 1 shared
    assert end(new_t=np.array([0.5]), new_bits=1000.0) == pytest.approx(3.1)
    # and its GPU work (1 s at 0.5 s) goes before chunk 0's decode
    assert end(new_t=np.array([0.5]), new_work=1.0) == pytest.approx(2.1)
    assert end(new_t=np.array([1.5]), new_work=1.0) == pytest.approx(2.6)  # before chunk 1


def test_stochastic_foresees_the_next_arrival_from_past_gaps() -> None:
    """Requests every 10 s: the next one comes 10 s after the last, on every future; before five
    arrivals nothing is foreseen."""
    c = get_controller("stochastic", paths=16)
    steady = history(*([8000.0] * 50), t_s=-0.5)
    for i in range(6):
        c.choose(obs(request_id=i, now_s=10.0 * i, link_history=steady))
    t, nbits, work = c._next_arrival(50.5, np.random.default_rng(0))
    assert np.all(t == 60.0) and nbits > 0 and work == 0.0
    fresh = get_controller("stochastic", paths=16)
    fresh.choose(obs(link_history=steady))
    assert np.all(np.isinf(fresh._next_arrival(0.5, np.random.default_rng(0))[0]))


def test_mpc_picks_the_plan_a_full_sort_would() -> None:
    """The first plan of highest utility, then earliest first token, then highest quality,
    on figures with many exact ties (as late plans all score 0)."""
    from kvcast.controllers.mpc import _first_best

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        util = rng.choice([0.0, 0.5, 0.9], size=n)
        ttft = rng.choice([0.4, 0.7, np.inf], size=n)
        q = rng.choice([0.8, 0.9], size=n)
        assert _first_best(util, ttft, q) == int(np.lexsort((-q, ttft, -util))[0])

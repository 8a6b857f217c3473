"""The SimPy model on hand-checkable cases: exact TTFTs, pipelining, sharing, the link's limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sim_support import profile_coster, scenario_doc, tiny_profile_doc, write_profile

from kvcast.chunks import split_tokens
from kvcast.controllers.registry import get_controller
from kvcast.sim.engine import Request, simulate
from kvcast.sim.network import PerChunkPath
from kvcast.sim.presets import MODELS, GpuTimeModel, get_gpu, get_model
from kvcast.sim.runner import run_scenario
from kvcast.sim.scenario import scenario_from_dict


def _setup(decode: float = 1000.0):
    return profile_coster(tiny_profile_doc(decode_melem_per_s=decode))


def _run(
    name: str,
    n_tokens: int = 300,
    bw: float = 1e9,
    delay: float = 0.0,
    overhead: float = 0.0,
    slo: float = 1.0,
):
    prof, coster = _setup()
    costs = [coster.request_costs(n_tokens, np.random.default_rng(0))]
    n = costs[0].n_chunks
    res = simulate(
        [Request(0, 0.0, n_tokens, slo)],
        costs,
        get_controller(name),
        lambda env: PerChunkPath(env, [[bw] * n], delay),
        prof.ladder,
        overhead,
    )
    return res


def test_exact_ttft_fixed_level() -> None:
    # 3 chunks x 100 tokens x 1000 elements x 8 bits = 100,000 bytes each: 0.8 ms at 1 Gbit/s.
    # Decode 100,000 elements at 1000 Melem/s = 0.1 ms, overlapping the next transfer.
    # Last chunk arrives at 2.4 ms, decoded by 2.5 ms; the decode step (1 token at 1000 tok/s) 1 ms.
    res = _run("fixed:hi")
    assert res.requests[0].ttft_s == pytest.approx(0.0035, abs=1e-12)
    c = res.chunks
    assert [x.arrive_s for x in c] == pytest.approx([0.0008, 0.0016, 0.0024])
    assert [x.gpu_start_s for x in c] == pytest.approx([0.0008, 0.0016, 0.0024])
    assert res.requests[0].bytes_sent == 300_000
    # pipelining: chunk 0 is decoded while chunk 1 is in flight
    assert c[1].send_start_s < c[0].gpu_end_s < c[1].arrive_s


def test_exact_ttft_with_delay_and_overhead() -> None:
    # each chunk: 0.5 ms overhead, 0.8 ms transfer, 10 ms one-way delay (sender waits for arrival)
    res = _run("fixed:hi", delay=0.010, overhead=0.0005)
    per = 0.0005 + 0.0008 + 0.010
    assert res.requests[0].ttft_s == pytest.approx(3 * per + 0.0001 + 0.001, abs=1e-12)


def test_exact_ttft_text() -> None:
    # TEXT: 400 bytes of token ids per chunk (3.2 us), prefill 100 tokens at 1000 tok/s = 0.1 s,
    # chunks prefilled in order: 0.3 s of GPU after the first arrival, then the 1 ms decode step.
    res = _run("text")
    assert res.requests[0].ttft_s == pytest.approx(3.2e-6 + 0.3 + 0.001, rel=1e-9)
    assert res.requests[0].n_text == 3
    assert all(c.gpu_kind == "prefill" for c in res.chunks)


def test_slow_decode_is_the_bottleneck() -> None:
    # decode 10 Melem/s: 10 ms per chunk, far slower than the 0.8 ms transfers: GPU-bound
    prof, coster = _setup(decode=10.0)
    costs = [coster.request_costs(300, np.random.default_rng(0))]
    res = simulate(
        [Request(0, 0.0, 300, 1.0)],
        costs,
        get_controller("fixed:hi"),
        lambda env: PerChunkPath(env, [[1e9] * 3]),
        prof.ladder,
    )
    assert res.requests[0].ttft_s == pytest.approx(0.0008 + 3 * 0.010 + 0.001)


def test_gpu_is_shared_fifo() -> None:
    # two requests at t=0, TEXT: one GPU, 0.6 s of prefill in total, interleaved in arrival order
    prof, coster = _setup()
    rng = np.random.default_rng(0)
    costs = [coster.request_costs(300, rng) for _ in range(2)]
    res = simulate(
        [Request(0, 0.0, 300, 1.0), Request(1, 0.0, 300, 1.0)],
        costs,
        get_controller("text"),
        lambda env: PerChunkPath(env, [[1e9] * 3] * 2),
        prof.ladder,
    )
    ends = sorted(r.ttft_s for r in res.requests)
    assert ends[1] == pytest.approx(0.6 + 3.2e-6 + 0.002, rel=1e-6)
    spans = sorted((c.gpu_start_s, c.gpu_end_s) for c in res.chunks)
    for (_s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
        assert s1 >= e0 - 1e-12  # never two jobs at once


def test_split_tokens() -> None:
    assert split_tokens(350, 100) == (100, 100, 100, 50)
    assert split_tokens(200, 100) == (100, 100)


def test_presets_shapes_and_prefill() -> None:
    m = get_model("llama-3.1-8b")
    assert m.kv_elements_per_token == 32 * 2 * 8 * 128
    assert m.matmul_params == pytest.approx(6.98e9, rel=0.01)  # 8.03B minus embeddings and lm_head
    gm = GpuTimeModel(m, get_gpu("a100"), 1, 0.5, 0.7)
    # attention over a prefix makes later chunks slower to recompute
    assert gm.prefill_s(1500, 15000) > gm.prefill_s(1500, 0) > 0
    flops = 2 * m.matmul_params * 1500 + 4 * 32 * 32 * 128 * (1500 * 1501 / 2)
    assert gm.prefill_s(1500, 0) == pytest.approx(flops / (312e12 * 0.5))
    assert {"mistral-7b", "llama-2-7b", "llama-2-13b", "llama-3.1-70b", "codellama-34b"} <= set(
        MODELS
    )


def test_trace_link_no_transfer_faster_than_the_link(tmp_path: Path) -> None:
    prof = write_profile(tmp_path, tiny_profile_doc(samples=True))
    doc = scenario_doc(
        prof,
        slo_s=[0.005, 0.05],
        workload={
            "requests": 6,
            "arrival": {"process": "poisson", "rate_per_s": 200.0},
            "context_tokens": {"uniform": [150, 450]},
        },
        link={
            "synthetic": {"kind": "steps", "mbps": [800, 50, 300, 0, 1000], "durations_s": 0.002},
            "delay_s": 0.001,
        },
    )
    sc = scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path)
    res = run_scenario(sc)
    from kvcast.sim.traceref import build_trace

    trace = build_trace(sc.link, sc.link.traces[0])
    ch = res.chunks
    assert len(ch) > 0
    for row in ch.itertuples():
        through = row.arrive_s - 0.001  # minus the one-way delay
        assert through >= row.send_start_s - 1e-12
        # concurrent flows share the link, so alone is the best case
        assert row.bytes <= trace.bytes_between(row.send_start_s, through) + 1e-6
        assert row.gpu_start_s >= row.arrive_s - 1e-12
    # a constant 1 Gbit/s link: one 100,000-byte chunk alone takes exactly 0.8 ms (+ delay)
    flat = write_profile(tmp_path, tiny_profile_doc(), "flat.json")
    doc2 = scenario_doc(
        flat,
        controllers=["fixed:hi"],
        workload={"requests": 1, "context_tokens": 100},
        link={"synthetic": {"kind": "constant", "mbps": 1000}, "delay_s": 0.001},
    )
    res2 = run_scenario(scenario_from_dict(doc2, source="t.yaml", base_dir=tmp_path))
    row = res2.chunks[res2.chunks.controller == "fixed:hi"].iloc[0]
    assert row.arrive_s - row.send_start_s == pytest.approx(0.0018, abs=1e-9)


def test_link_that_never_delivers_fails_clearly(tmp_path: Path) -> None:
    from kvcast.errors import InputError

    prof = write_profile(tmp_path, tiny_profile_doc())
    doc = scenario_doc(
        prof,
        controllers=["fixed:hi"],
        workload={"requests": 1, "context_tokens": 300},
        link={"synthetic": {"kind": "constant", "mbps": 1, "duration_s": 0.01, "loop": False}},
    )
    with pytest.raises(InputError, match="never got their first token"):
        run_scenario(scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path))


def test_the_ack_delay_holds_each_next_chunk_back(tmp_path: Path) -> None:
    """With `link.ack_delay_s` the sender sends chunk i+1 that long after chunk i arrived (it
    learns of the arrival from the receiver's acknowledgement); the first chunk is not held."""
    prof = write_profile(tmp_path, tiny_profile_doc())
    rows = {}
    for ack in (0.0, 0.25):
        doc = scenario_doc(
            prof,
            link={"kind": "per_chunk", "low_gbps": 1.0, "high_gbps": 1.0, "ack_delay_s": ack},
            controllers=["fixed:mid"],
            workload={"requests": 1, "context_tokens": 300},
        )
        res = run_scenario(scenario_from_dict(doc, source="t.yaml", base_dir=tmp_path))
        ch = res.chunks
        rows[ack] = ch[ch.controller == "fixed:mid"].sort_values("chunk_index")
        if ack:
            assert res.scenario.to_dict()["link"]["ack_delay_s"] == ack
    held = rows[0.25]
    assert held.send_start_s.iloc[0] == rows[0.0].send_start_s.iloc[0]
    gaps = held.send_start_s.to_numpy()[1:] - held.arrive_s.to_numpy()[:-1]
    assert gaps == pytest.approx([0.25, 0.25])

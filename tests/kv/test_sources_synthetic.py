"""SYNTHETIC generator: fitted from a real cache, chunked, deterministic, labelled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvcast.errors import InputError
from kvcast.kv.cache import summary
from kvcast.kv.sources import capture, load_model
from kvcast.kv.sources.safetensors_io import load_kv, save_kv
from kvcast.kv.sources.synthetic import SyntheticGenerator, fit, parse_shape


@pytest.fixture(scope="module")
def real_file(stories260k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = capture(f"stories260k:{stories260k_dir}", context="prose", tokens=480)
    return save_kv(cache, tmp_path_factory.mktemp("syn") / "real.safetensors")


def test_statistics_are_recovered_from_generated_data(real_file: Path) -> None:
    stats = fit(load_kv(real_file))
    assert stats.mean.shape == (5, 2, 4, 8) and stats.fit_tokens == 479
    # the real cache has token locality in K: some channels strongly correlated
    assert float(stats.rho[:, 0].max()) > 0.8
    gen = SyntheticGenerator(stats, (5, 4, 8), name="stories-shaped", seed=1, dtype=torch.float32)
    big = gen.generate(6000)
    refit = fit(big, allow_synthetic=True)
    assert torch.allclose(refit.std, stats.std, rtol=0.15, atol=0.02)
    assert torch.allclose(refit.rho, stats.rho, atol=0.12)
    assert torch.allclose(refit.mean, stats.mean, atol=0.3 * float(stats.std.max()))


def test_chunks_do_not_depend_on_chunk_size(real_file: Path) -> None:
    gen = SyntheticGenerator(fit(load_kv(real_file)), (3, 2, 16), name="x", seed=5)
    a = torch.cat([c.kv for c in gen.chunks(300, chunk_tokens=7)], dim=2)
    b = torch.cat([c.kv for c in gen.chunks(300, chunk_tokens=300)], dim=2)
    assert a.shape == (3, 2, 300, 2, 16) and torch.equal(a, b)
    other = SyntheticGenerator(gen.stats, (3, 2, 16), name="x", seed=6)
    assert not torch.equal(next(other.chunks(50)).kv, b[:, :, :50])


def test_llama70b_shaped_chunk_is_labelled_synthetic(real_file: Path) -> None:
    name, shape = parse_shape("llama-3.1-70b")
    assert (name, shape) == ("Llama-3.1-70B", (80, 8, 128))
    gen = SyntheticGenerator(fit(load_kv(real_file)), shape, name=name, seed=0)
    chunk = next(gen.chunks(100_000, chunk_tokens=64))
    assert chunk.kv.shape == (80, 2, 64, 8, 128) and chunk.kv.dtype == torch.float16
    assert chunk.meta.synthetic and chunk.meta.model_id == "synthetic:Llama-3.1-70B"
    assert chunk.meta.label().endswith("[SYNTHETIC]") and chunk.meta.token_ids == []
    assert "SYNTHETIC" in "\n".join(summary(chunk))


def test_capture_synthetic_and_save(real_file: Path, tmp_path: Path) -> None:
    cache = capture("synthetic:6x2x16", fit=real_file, tokens=200, seed=3)
    assert cache.kv.shape == (6, 2, 200, 2, 16) and cache.meta.source == "synthetic"
    assert cache.meta.extra["fit_file"] == str(real_file)
    back = load_kv(save_kv(cache, tmp_path / "syn.safetensors"))
    assert back.meta.synthetic and torch.equal(back.kv, cache.kv)
    again = capture("synthetic:6x2x16", fit=real_file, tokens=200, seed=3)
    assert torch.equal(again.kv, cache.kv)


def test_synthetic_errors(real_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--fit FILE is required"):
        capture("synthetic:llama-3.1-8b", tokens=10)
    with pytest.raises(InputError, match="synthetic shape 'gpt-9'"):
        capture("synthetic:gpt-9", fit=real_file, tokens=10)
    syn = save_kv(capture("synthetic:2x2x8", fit=real_file, tokens=20), tmp_path / "s.safetensors")
    with pytest.raises(InputError, match="fit synthetic statistics from a real cache only"):
        capture("synthetic:2x2x8", fit=syn, tokens=10)
    with pytest.raises(InputError, match="takes no --text or --context"):
        capture("synthetic:2x2x8", fit=real_file, tokens=10, context="prose")
    with pytest.raises(InputError, match="holds caches, not a model"):
        load_model("synthetic:2x2x8")
    with pytest.raises(InputError, match="GiB in memory"):
        SyntheticGenerator(fit(load_kv(real_file)), (80, 8, 128), name="big").generate(10_000_000)

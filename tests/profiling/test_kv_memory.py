"""Bounded memory: `kvcast codec encode`'s peak RSS does not grow with the cache, and
`kvcast bench kv-memory` measures it per step in child processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kvcast.cli import main
from kvcast.kv.cache import KVMeta
from kvcast.kv.sources.safetensors_io import KVWriter
from kvcast.profiling.kv_memory import run_child


def _random_kv_file(path: Path, n_tokens: int, shape: tuple[int, int, int]) -> Path:
    L, H, D = shape
    meta = KVMeta(model_id="synthetic:rss", source="synthetic", dtype="float32", n_layers=L,
                  n_kv_heads=H, head_dim=D, token_ids=[], synthetic=True)  # fmt: skip
    rng = np.random.default_rng(0)
    with KVWriter(path, meta, n_tokens) as w:
        for t0 in range(0, n_tokens, 2000):
            n = min(2000, n_tokens - t0)
            part = rng.standard_normal((L, 2, n, H, D), dtype=np.float32).cumsum(axis=2) * 0.05
            w.write(t0, torch.from_numpy(part))
    return path


@pytest.mark.slow
def test_encode_peak_rss_does_not_grow_with_the_tokens(tmp_path: Path) -> None:
    """6,000 and 24,000 tokens (96 and 384 MiB in float32): loading the cache whole would add
    at least the 288 MiB difference; streaming keeps the peak at one chunk's working memory."""
    peaks = {}
    for n in (6000, 24000):
        kv = _random_kv_file(tmp_path / f"kv{n}.safetensors", n, (8, 4, 64))
        argv = [sys.executable, "-m", "kvcast", "codec", "encode", str(kv), "--level",
                "cachegen-q2", "--chunk-tokens", "1500", "-o", str(tmp_path / f"c{n}")]  # fmt: skip
        r = run_child(argv, tmp_path / "log.txt")
        assert r.returncode == 0, (tmp_path / "log.txt").read_text()[-2000:]
        assert len(list((tmp_path / f"c{n}").glob("chunk_*.kvc"))) == n // 1500
        peaks[n] = r.peak_rss_bytes
        kv.unlink()
    growth = peaks[24000] - peaks[6000]
    assert growth < 64 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB: {peaks}"


@pytest.fixture(scope="module")
def real_file(stories260k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvcast.kv.sources import capture
    from kvcast.kv.sources.safetensors_io import save_kv

    cache = capture(f"stories260k:{stories260k_dir}", context="prose", tokens=200)
    return save_kv(cache, tmp_path_factory.mktemp("kvmem") / "real.safetensors")


@pytest.mark.slow
def test_bench_kv_memory_prints_a_row_per_size(
    real_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    work = tmp_path / "work"
    assert main(["bench", "kv-memory", "--shape", "2x2x16", "--tokens", "100,400", "--fit",
                 str(real_file), "--workdir", str(work), "--json", str(out)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "synthetic:2x2x16" in table and "capture RSS" in table and "peak RSS changes" in table
    res = json.loads(out.read_text())
    assert [s["tokens"] for s in res["sizes"]] == [100, 400]
    for s in res["sizes"]:
        assert set(s["steps"]) == {"capture", "encode", "decode"} and s["encoded_bytes"] > 0
        assert all(st["returncode"] == 0 and st["peak_rss_bytes"] > 0 for st in s["steps"].values())
    assert not list(work.glob("*.safetensors"))  # big files are removed


def test_bench_kv_memory_checks_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "kv-memory", "--tokens", "10,x"]) == 2
    assert "--tokens '10,x'" in capsys.readouterr().err
    assert main(["bench", "kv-memory", "--shape", "gpt-9", "--fit", "nowhere"]) == 2
    assert "synthetic shape 'gpt-9'" in capsys.readouterr().err

"""H2O selection on hand-made attention scores: budgets, the recent window, nested tiers."""

from __future__ import annotations

import pytest
import torch

from kvcast.errors import InputError
from kvcast.kv import h2o


def _scores(n: int = 20, layers: int = 2, heads: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layers, n, heads, generator=g, dtype=torch.float64)


def test_keeps_the_heaviest_tokens_per_layer_and_head() -> None:
    s = _scores()
    idx = h2o.selection(s, 0.25, recent=False)
    assert idx.shape == (2, 5, 3)
    for layer in range(2):
        for head in range(3):
            want = torch.topk(s[layer, :, head], 5).indices.sort().values
            assert idx[layer, :, head].tolist() == want.tolist()


def test_the_last_chunk_keeps_its_recent_window() -> None:
    s = _scores()
    s[:, -5:, :] = 0.0  # the most recent tokens get no attention, yet stay
    idx = h2o.selection(s, 0.5, recent=True)  # 10 kept: the last 5, then the 5 heaviest
    for layer in range(2):
        for head in range(3):
            kept = idx[layer, :, head].tolist()
            assert kept[-5:] == [15, 16, 17, 18, 19]
            heavy = torch.topk(s[layer, :15, head], 5).indices.sort().values.tolist()
            assert kept[:5] == heavy


def test_tiers_are_nested_disjoint_and_cover_every_token() -> None:
    s = _scores(n=37)
    for recent in (False, True):
        parts = h2o.tiers(s, [0.25, 0.5, 1.0], recent=recent)
        assert [p.shape[1] for p in parts] == [9, 9, 19]  # round(9.25), round(18.5) - 9, rest
        union = torch.cat(parts, dim=1).sort(dim=1).values
        assert torch.equal(union, torch.arange(37)[None, :, None].expand(2, 37, 3))
        top = h2o.selection(s, 0.5, recent=recent)
        assert torch.equal(torch.cat(parts[:2], dim=1).sort(dim=1).values, top)


def test_gather_takes_each_heads_own_tokens() -> None:
    chunk = torch.arange(2 * 2 * 6 * 3 * 4, dtype=torch.float32).view(2, 2, 6, 3, 4)
    idx = torch.tensor([[[0, 1, 2], [5, 4, 3]], [[1, 1, 1], [2, 3, 4]]])  # [L=2, k=2, H=3]
    out = h2o.gather(chunk, idx)
    assert out.shape == (2, 2, 2, 3, 4)
    for layer in range(2):
        for slot in range(2):
            for head in range(3):
                t = int(idx[layer, slot, head])
                assert torch.equal(out[layer, :, slot, head], chunk[layer, :, t, head])


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5])
def test_bad_budgets_are_refused(keep: float) -> None:
    with pytest.raises(InputError, match="share"):
        h2o.selection(_scores(), keep, recent=False)


def test_tiers_need_increasing_budgets() -> None:
    with pytest.raises(InputError, match="increasing"):
        h2o.tiers(_scores(), [0.5, 0.25], recent=False)

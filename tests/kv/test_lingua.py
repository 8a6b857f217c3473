"""LLMLingua-style pruning on hand-made surprisals: per-chunk budgets, the instruction kept."""

from __future__ import annotations

import math

import pytest
import torch

from kvcast.errors import InputError
from kvcast.kv import lingua


def test_surprisal_is_the_negative_log_probability_of_each_next_token() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    ids = [2, 1, 0]
    s = lingua.surprisal_from_logits(logits, ids)
    assert math.isinf(s[0])
    lse0 = math.log(1 + math.e + math.e**2)
    lse1 = math.log(math.e**3 + 2)
    assert s[1].item() == pytest.approx(lse0 - 1.0)
    assert s[2].item() == pytest.approx(lse1 - 3.0)
    with pytest.raises(InputError, match="T - 1"):
        lingua.surprisal_from_logits(logits, [1, 2])


def test_each_chunk_keeps_its_most_surprising_tokens_in_order() -> None:
    s = torch.tensor([9.0, 1, 5, 2, 8, 3, 7, 4, 6, 0], dtype=torch.float64)
    bounds = [(0, 4), (4, 10)]
    mask = lingua.keep_mask(s, bounds, 0.5)
    assert mask.nonzero().flatten().tolist() == [0, 2, 4, 6, 8]
    assert lingua.kept_bounds(mask, bounds) == [(0, 2), (2, 5)]


def test_the_instruction_is_never_pruned() -> None:
    s = torch.tensor([0.0, 0.0, 0.0, 9, 8, 1, 2, 3], dtype=torch.float64)
    mask = lingua.keep_mask(s, [(0, 8)], 0.5, instruction_tokens=3)
    assert mask.nonzero().flatten().tolist() == [0, 1, 2, 3]
    # an instruction longer than the chunk's budget stays whole
    mask = lingua.keep_mask(s, [(0, 4), (4, 8)], 0.25, instruction_tokens=3)
    assert mask[:3].all() and int(mask[4:].sum()) == 1


@pytest.mark.parametrize("keep", [0.0, 1.2])
def test_bad_ratios_are_refused(keep: float) -> None:
    with pytest.raises(InputError, match="keep ratio"):
        lingua.keep_mask(torch.ones(4), [(0, 4)], keep)

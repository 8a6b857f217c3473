"""H2O-style token selection: keep the "heavy hitters" (tokens that receive the most attention)
plus a recent window, per layer and KV head, and drop the rest of the KV cache.

The rule (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
Language Models", NeurIPS 2023, arXiv:2306.14048; github.com/FMInference/H2O):

- **Score** of a token in one layer and KV head: its *accumulated attention*, the sum over every
  query of the context of the softmax weight that query gives it (all query heads of the KV
  head's group summed; `LoadedModel.attention_received`). This is the one-shot ("idealized")
  H2O CacheGen compares with, which scores with the prompt's own queries.
- **Budget**: a fraction `keep` of the tokens, split as H2O splits it: half the most recent
  tokens of the context, half the highest-scoring others.
- **Per chunk**: kvcast streams a context in chunks whose levels are chosen one by one, so each
  chunk keeps `keep` of its own tokens (rounded, at least one) per layer and KV head; the recent
  window is the last chunk's (the only one holding the context's most recent tokens). A chunk
  reduced this way is still a ``[L, 2, k, H, D]`` tensor: every layer and head keeps k tokens,
  each its own (slot j of head h is whichever token head h kept j-th, in context order).
- **Positions**: as in H2O, kept tokens keep the positions they had (keys are cached after RoPE);
  tokens that follow the reduced cache continue from the full context's length
  (`LoadedModel.prefill(..., dropped=...)`).

`selection` gives nested sets: the tokens kept at a smaller budget are among those kept at a
larger one, so a chunk can be sent as *importance tiers* (the top 25%, then the next 25%, ...)
and a receiver holding the first tiers holds exactly the H2O cache of their budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvcast.errors import InputError
from kvcast.reductions import kept_tokens


def selection(scores: torch.Tensor, keep: float, *, recent: bool) -> torch.Tensor:
    """Indices of the tokens one chunk keeps: ``[L, k, H]`` int64, in context order per head.

    `scores` is the chunk's slice of the accumulated attention ``[L, n, H]``; `recent`: whether
    the chunk ends the context (it then keeps its last k // 2 tokens as the recent window).
    """
    if scores.dim() != 3:
        raise InputError(f"H2O scores must be [layers, tokens, heads], got {tuple(scores.shape)}")
    n_layers, n, n_heads = scores.shape
    k = kept_tokens(n, keep)
    window = k // 2 if recent else 0
    ranked = scores.double().clone()
    if window:
        ranked[:, n - window :, :] = float("inf")  # the recent window always stays
    # one deterministic order (score, then the earlier token on a tie): the budgets take
    # prefixes of it, which keeps smaller budgets' selections inside larger ones'
    order = torch.sort(-ranked, dim=1, stable=True).indices
    return torch.sort(order[:, :k, :], dim=1).values


def gather(chunk: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The kept part ``[L, 2, k, H, D]`` of a chunk ``[L, 2, n, H, D]`` (index from `selection`)."""
    L, two, _n, H, D = chunk.shape
    idx = index[:, None, :, :, None].expand(L, two, index.shape[1], H, D)
    return torch.gather(chunk, 2, idx)


def tiers(scores: torch.Tensor, budgets: Sequence[float], *, recent: bool) -> list[torch.Tensor]:
    """One chunk's importance tiers: for increasing `budgets` (e.g. 0.25, 0.5, 1.0), the tokens
    kept at each budget and not at the one before, ``[L, k_m - k_(m-1), H]`` each, in context
    order per head. The sets are nested by construction of `selection`; checked here."""
    if list(budgets) != sorted(set(budgets)):
        raise InputError(f"importance tiers need increasing budgets, got {list(budgets)}")
    out, before = [], None
    for b in budgets:
        now = selection(scores, b, recent=recent)
        if before is None:
            out.append(now)
        else:
            mask = torch.ones(scores.shape, dtype=torch.bool)
            mask.scatter_(1, before, False)  # True: not in an earlier tier
            fresh = mask.gather(1, now).transpose(1, 2)  # [L, H, k]
            n_new = now.shape[1] - before.shape[1]
            if not bool((fresh.sum(dim=2) == n_new).all()):
                raise InputError(f"H2O selections at budgets {list(budgets)} are not nested")
            picked = now.transpose(1, 2)[fresh].view(now.shape[0], now.shape[2], n_new)
            out.append(picked.transpose(1, 2).contiguous())
        before = now
    return out

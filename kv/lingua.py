"""LLMLingua-style pruning of a context's text: drop the tokens a small language model finds
least surprising, keep the instruction, and prefill (or encode the KV of) the shorter text.

The rule, after LLMLingua's token-level compression (Jiang et al., "LLMLingua: Compressing
Prompts for Accelerated Inference of Large Language Models", EMNLP 2023, arXiv:2310.05736;
github.com/microsoft/LLMLingua), simplified where kvcast's setting differs (docs/reduction.md):

- **Score** of a token: its surprisal under the scoring model (SmolLM2 here),
  ``-log p(token | the context before it)``; LLMLingua keeps tokens of high perplexity, which
  carry information the model could not guess. The first token has no prediction and is kept.
- **Budget**: a fraction `keep` of each chunk's tokens (rounded, at least one), the chunk's
  highest-surprisal tokens, in their original order, so each chunk is pruned on its own and a
  controller can still choose chunk by chunk.
- **Kept intact**: the context's instruction (`Context.instruction_tokens`, e.g. a LongChat
  preamble) is never pruned (it counts against its chunk's budget); the question asked after
  the context is not part of the context and is never touched (LLMLingua, too, compresses the
  instruction and question far less than the demonstrations).
- **Not done**: LLMLingua's coarse, demonstration-level budget controller (these contexts have
  no demonstrations), its iterative conditioning on the already-compressed prefix (one pass,
  conditioned on the original text), and its distribution alignment of the scoring model.

The pruned text is a new, shorter context: positions run 0..k-1, and whatever follows it (the
question, the answer) continues from k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvcast.errors import InputError
from kvcast.reductions import kept_tokens


def surprisal_from_logits(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Surprisal (nats) of tokens 1..T-1 from the logits of tokens 0..T-2 (``[T-1, vocab]``);
    token 0 gets +inf (it has no prediction, so it is always kept)."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.int64)
    if logits.shape[0] != ids.numel() - 1:
        raise InputError(f"{logits.shape[0]} logits rows for {ids.numel()} tokens (need T - 1)")
    logp = torch.log_softmax(logits.double(), dim=-1)
    tail = -logp[torch.arange(ids.numel() - 1), ids[1:]]
    return torch.cat([torch.tensor([float("inf")], dtype=torch.float64), tail])


def keep_mask(
    surprisal: torch.Tensor,
    bounds: Sequence[tuple[int, int]],
    keep: float,
    *,
    instruction_tokens: int = 0,
) -> torch.Tensor:
    """Which tokens the pruned context keeps (bool ``[T]``): per chunk (`bounds`), its
    round(keep * n) highest-surprisal tokens, the instruction's tokens first."""
    if not 0.0 < keep <= 1.0:
        raise InputError(f"LLMLingua keep ratio must be in (0, 1], got {keep}")
    if instruction_tokens < 0:
        raise InputError(f"instruction_tokens must be >= 0, got {instruction_tokens}")
    ranked = surprisal.double().clone()
    ranked[:instruction_tokens] = float("inf")
    mask = torch.zeros(ranked.numel(), dtype=torch.bool)
    for s, e in bounds:
        n = e - s
        k = kept_tokens(n, keep)
        protected = int(min(e, instruction_tokens) - s) if instruction_tokens > s else 0
        k = max(k, protected)  # an instruction longer than the budget is still kept whole
        top = torch.topk(ranked[s:e], k, largest=True, sorted=False).indices
        mask[s + top] = True
    return mask


def kept_bounds(mask: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Where each original chunk's kept tokens lie in the pruned context."""
    counts = [int(mask[s:e].sum()) for s, e in bounds]
    out, at = [], 0
    for c in counts:
        out.append((at, at + c))
        at += c
    return out

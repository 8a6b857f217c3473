"""Answer quality of a decoded KV cache, measured by running the real model on it.

The reference is the uncompressed cache of the same context (the fp32 KV the model produced).
For a cache under test (every chunk decoded at one level, or a mix of levels and TEXT chunks)
the model answers the same *probes* on top of it, and we compare with the reference:

- **perplexity** of a held-out continuation (the text that really follows the context): the
  probe feeds the continuation's tokens after the cache; tokens 2..n are scored (the first one is
  fed, not predicted: its prediction would come from the capture pass, not from the cache).
- **greedy agreement**: the reference cache's own greedy continuation (32 tokens, generated
  after the held-out continuation) is fed after the continuation in the same probe, and we count
  the positions where the cache under test predicts the same argmax token (teacher-forced
  agreement, 0..1). Up to its first disagreement, a free-running greedy decode from the cache
  under test produces exactly these tokens, so `greedy_prefix` (length of the identical prefix /
  32) is the exact free-running figure and comes from the same forward pass.
- **retrieval** (LongChat-style contexts): the question is fed after the context and the
  reference's greedy answer teacher-forced after it; where the cache under test first
  disagrees, greedy decoding continues from there, so the answer is exactly the one free-running
  greedy decoding gives, at a fraction of the cost. Correct if it names the expected topic.
  Accuracy is counted only over contexts the reference answers correctly.

Normalized quality of one context (uncompressed = 1.0), the mean of the available components:

    q_ppl = ppl_ref / ppl_x = exp((nll_ref - nll_x) / n)      (can exceed 1 by noise)
    q_greedy = greedy agreement                                (reference: 1.0)
    q_retrieval = 1.0 if answered correctly else 0.0           (only if the reference is correct)
    quality = mean(q_ppl, q_greedy[, q_retrieval])

A level's normalized quality is the mean over contexts (docs/quality.md).

Mixed chunks: `assemble_cache` builds the cache a receiver would hold when each chunk arrives at
its own level or as TEXT; TEXT chunks are recomputed by prefill on top of the (decoded) prefix,
as the receiver does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from kvcast.chunks import chunk_bounds
from kvcast.codec.ladder import TEXT
from kvcast.errors import InputError
from kvcast.kv.contexts import Context
from kvcast.kv.sources.base import LoadedModel

N_CONTINUATION = 64  # held-out tokens after the context (perplexity)
N_GREEDY = 32  # greedy tokens compared (agreement)
N_ANSWER = 12  # greedy tokens of a retrieval answer


@dataclass(frozen=True)
class Probes:
    """What every cache of one context is asked; built once from the reference cache."""

    continuation: tuple[int, ...]  # held-out tokens that follow the context
    greedy_ref: tuple[int, ...]  # reference's greedy continuation after `continuation`
    question: tuple[int, ...] = ()  # retrieval question tokens (empty: no retrieval)
    answer_ref: tuple[int, ...] = ()  # reference's greedy answer to the question
    ref_correct: bool | None = None  # whether the reference's answer is right


@dataclass(frozen=True)
class RawQuality:
    """Raw metrics of one cache on one context's probes."""

    nll: float  # mean negative log-likelihood (nats/token) of continuation[1:]
    greedy_agreement: float  # teacher-forced argmax agreement with greedy_ref, 0..1
    greedy_prefix: float  # identical prefix of the free-running greedy continuation / N, 0..1
    retrieval_correct: bool | None = None  # None: not a retrieval context
    answer: str | None = None  # the generated retrieval answer

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict:
        return {**asdict(self), "perplexity": self.perplexity}


def _ids(x: Sequence[int]) -> list[int]:
    return [int(t) for t in x]


def make_probes(
    model: LoadedModel,
    ref_kv: torch.Tensor,
    continuation: Sequence[int],
    context: Context | None = None,
    *,
    n_greedy: int = N_GREEDY,
    n_answer: int = N_ANSWER,
) -> Probes:
    """Probes for one context from its uncompressed cache `ref_kv` [L, 2, T, H, D].

    `continuation`: the held-out tokens that follow the context (at least 2). A `context` with a
    question (LongChat-style) adds the retrieval probe.
    """
    cont = _ids(continuation)
    if len(cont) < 2:
        raise InputError(
            f"quality probes need a held-out continuation of >= 2 tokens, got {len(cont)}"
        )
    if n_greedy < 1:
        raise InputError(f"n_greedy must be >= 1, got {n_greedy}")
    greedy = model.greedy(cont, n_greedy, ref_kv)
    question: list[int] = []
    answer: list[int] = []
    ref_correct = None
    if context is not None and context.question is not None:
        question = model.tokenize(context.question)
        answer = model.greedy(question, n_answer, ref_kv)
        ref_correct = context.answer_correct(model.detokenize(answer))
    return Probes(tuple(cont), tuple(greedy), tuple(question), tuple(answer), ref_correct)


def measure(
    model: LoadedModel,
    kv: torch.Tensor,
    probes: Probes,
    context: Context | None = None,
    *,
    dropped: int = 0,
) -> RawQuality:
    """Raw metrics of cache `kv` on `probes` (one or two forward passes over it). `dropped`:
    tokens the cache lacks but whose positions count (an H2O-reduced cache, `LoadedModel.prefill`)."""
    cont, greedy = list(probes.continuation), list(probes.greedy_ref)
    logits, _ = model.prefill(cont + greedy, kv, dropped=dropped)
    logp = torch.log_softmax(logits.double(), dim=-1)
    n = len(cont)
    targets = torch.tensor(cont[1:])
    nll = float(-logp[torch.arange(n - 1), targets].mean())
    pred = logits[n - 1 : n - 1 + len(greedy)].argmax(-1).tolist()
    match = [int(p == g) for p, g in zip(pred, greedy, strict=True)]
    prefix = match.index(0) if 0 in match else len(match)
    retrieval = None
    answer_text = None
    if probes.question:
        if context is None or context.answer is None:
            raise InputError("measure: a retrieval probe needs its context (expected answer)")
        answer_text = _answer(model, kv, probes, dropped)
        retrieval = context.answer_correct(answer_text)
    return RawQuality(
        nll=nll,
        greedy_agreement=sum(match) / len(match),
        greedy_prefix=prefix / len(match),
        retrieval_correct=retrieval,
        answer=answer_text,
    )


def _answer(model: LoadedModel, kv: torch.Tensor, probes: Probes, dropped: int = 0) -> str:
    """The free-running greedy answer of `kv`, teacher-forcing the reference's up to divergence."""
    q, ref = list(probes.question), list(probes.answer_ref)
    logits, full = model.prefill(q + ref, kv, dropped=dropped)
    pred = logits[len(q) - 1 : len(q) - 1 + len(ref)].argmax(-1).tolist()
    d = next((i for i, (p, r) in enumerate(zip(pred, ref, strict=True)) if p != r), len(ref))
    if d == len(ref):
        return model.detokenize(ref)
    out = ref[:d] + [pred[d]]
    remaining = len(ref) - len(out)
    if remaining > 0:
        # cache up to (and including) the question and ref[:d]; continue from the divergent token
        keep = kv.shape[2] + len(q) + d
        out += model.greedy([pred[d]], remaining, full[:, :, :keep], dropped=dropped)
    return model.detokenize(out)


# ------------------------------------------------------------------------ normalization


def component_scores(
    raw: RawQuality, ref: RawQuality, ref_correct: bool | None
) -> dict[str, float]:
    """The normalized components of one context (see the module docstring)."""
    out = {"ppl": math.exp(ref.nll - raw.nll), "greedy": raw.greedy_agreement}
    if ref_correct and raw.retrieval_correct is not None:
        out["retrieval"] = 1.0 if raw.retrieval_correct else 0.0
    return out


def normalized_quality(raw: RawQuality, ref: RawQuality, ref_correct: bool | None) -> float:
    """Normalized quality of one context: mean of its components; the reference scores 1.0."""
    comps = component_scores(raw, ref, ref_correct)
    return sum(comps.values()) / len(comps)


def quality_figures(raw: RawQuality, ref: RawQuality, ref_correct: bool | None) -> dict:
    """One cache's quality record in a profile measurement: its raw metrics, their normalized
    components and the normalized quality (plain JSON-able data)."""
    comps = component_scores(raw, ref, ref_correct)
    return {**raw.to_dict(), "components": comps, "normalized": sum(comps.values()) / len(comps)}


# ------------------------------------------------------------------------ mixed caches

ChunkDecoder = Callable[[int, str], torch.Tensor]


def assemble_cache(
    model: LoadedModel,
    token_ids: Sequence[int],
    chunk_tokens: int,
    levels: Sequence[str],
    decoded: ChunkDecoder,
) -> torch.Tensor:
    """The cache a receiver holds when chunk i arrives at `levels[i]` (or as TEXT).

    `decoded(i, level)` returns chunk i decoded at `level` ([L, 2, T_i, H, D]); TEXT chunks are
    recomputed by prefilling their tokens on top of the cache assembled so far.
    """
    ids = _ids(token_ids)
    bounds = chunk_bounds(len(ids), chunk_tokens)
    if len(levels) != len(bounds):
        raise InputError(
            f"{len(levels)} levels given for {len(bounds)} chunks of {chunk_tokens} tokens"
        )
    kv: torch.Tensor | None = None
    for i, ((s, e), level) in enumerate(zip(bounds, levels, strict=True)):
        if level == TEXT:
            _, kv = model.prefill(ids[s:e], kv, logits_to_keep=1)
            continue
        part = decoded(i, level).to(torch.float32)
        if part.shape[2] != e - s:
            raise InputError(f"chunk {i} at {level!r}: {part.shape[2]} tokens, expected {e - s}")
        kv = part if kv is None else torch.cat([kv.to(torch.float32), part], dim=2)
    assert kv is not None
    return kv

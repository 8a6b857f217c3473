"""Importance-first streaming: send every chunk's most important tokens first, and let the
receiver proceed at the deadline with what it has (docs/reduction.md).

`importance:<codec level>` sends a request as H2O importance tiers (`kvcast.reductions`): the
top 25% of every chunk's tokens (per layer and KV head, by accumulated attention), then the next
25% of every chunk, then the other 50%, each part encoded at the codec level (`fp16`: not
encoded). The profile's levels ``h2o-25+L``, ``h2o-50+L`` and ``h2o-100+L`` hold what each tier
adds (their bytes and decode times are cumulative, tier by tier) and the quality of a cache
holding the tiers up to it, measured with the real model (`kvcast profile reduce`).

The receiver decodes the parts as they arrive, skipping a part past the first tier whose decode
would end after the deadline (``arrival + SLO - first-token step``). It proceeds when every part
is decoded, or at the deadline with the tiers fully decoded by then (if the first tier is not,
as soon as it is); tokens of an incomplete tier are not used. The simulator runs this mode
itself (`kvcast.sim.engine`): there is no per-chunk decision to make; `importance_outcome`
computes the same rule for the bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvcast.errors import InputError
from kvcast.reductions import (
    H2O,
    TIER_PERCENTS,
    Reduction,
    importance_tiers,
    is_reduction,
    kept_tokens,
    parse_reduction,
)

from .base import Decision, Observation

# seconds for `nbytes` of chunk `chunk_index`'s part, sent at `start_s` (a Foresight's call)
TransferTime = Callable[[int, int, float], float]


class ImportanceFirst:
    """Marks a request to be streamed by importance tiers at one codec level."""

    def __init__(self, codec: str) -> None:
        if not codec:
            raise InputError("controller 'importance' needs a codec level: importance:<level>")
        self.codec = codec
        self.name = f"importance:{codec}"
        self.importance_tiers = importance_tiers(codec)

    def reset(self, request_id: int) -> None:
        pass

    def importance_tiers_for(self, obs: Observation) -> tuple[str, ...] | None:
        """At a request's arrival: stream it by these tiers (always)."""
        return self.importance_tiers

    def choose(self, obs: Observation) -> Decision:
        raise InputError(
            f"controller {self.name!r} streams whole requests by importance tiers; it makes no "
            "per-chunk decision (the simulator runs it; emulation does not support it)"
        )


def importance_first(arg: str) -> ImportanceFirst:
    return ImportanceFirst(arg)


def tier_parts(
    sizes: dict[str, Sequence[int]],
    decode_s: dict[str, Sequence[float]],
    tiers: Sequence[str],
    who: str,
    tokens: Sequence[int],
) -> list[tuple[int, int, int, float, int]]:
    """The parts in send order: (tier, chunk, bytes, receiver work, tokens), tier m of chunk i
    adding what level `tiers[m]` holds beyond `tiers[m - 1]` (the profile's levels are
    cumulative); its tokens are the ones its share of the chunk keeps (`kept_tokens`)."""
    missing = [t for t in tiers if t not in sizes]
    if missing:
        raise InputError(
            f"{who} needs the importance tiers {', '.join(tiers)} in the codec profile (missing: "
            f"{', '.join(missing)}); measure them with `kvcast profile reduce`"
        )
    keeps = [parse_reduction(t).keep for t in tiers]
    parts = []
    for m, tier in enumerate(tiers):
        for i in range(len(sizes[tier])):
            nbytes = sizes[tier][i] - (sizes[tiers[m - 1]][i] if m else 0)
            work = decode_s[tier][i] - (decode_s[tiers[m - 1]][i] if m else 0.0)
            if nbytes <= 0 or work < 0:
                before = f"{tiers[m - 1]!r}" if m else "nothing"
                raise InputError(
                    f"{who}: level {tier!r} holds no more than {before} for chunk {i} "
                    f"({nbytes} bytes, {work:.3g} s more): not importance tiers of one another"
                )
            n_tok = kept_tokens(tokens[i], keeps[m]) - (
                kept_tokens(tokens[i], keeps[m - 1]) if m else 0
            )
            parts.append((m, i, int(nbytes), float(work), n_tok))
    return parts


def tier_sets(levels: Sequence[str]) -> list[tuple[str, ...]]:
    """Every complete set of importance tiers among `levels` (one per codec level)."""
    names = set(levels)
    firsts = [r for r in map(_parsed, levels) if r is not None]
    codecs = {r.codec for r in firsts if r.method == H2O and r.percent == TIER_PERCENTS[0]}
    found = [importance_tiers(c) for c in sorted(codecs, key=lambda c: c or "")]
    return [t for t in found if all(n in names for n in t)]


def _parsed(name: str) -> Reduction | None:
    """The reduction level `name` names, or None (a codec level or baseline)."""
    if not is_reduction(name):
        return None
    try:
        return parse_reduction(name)
    except InputError:
        return None


def importance_outcome(
    obs: Observation, tiers: Sequence[str], transfer_s: TransferTime
) -> tuple[float, float]:
    """(first-token time, quality) of streaming `obs`'s request from its first chunk by
    importance tiers, alone, given each part's transfer time: the simulator's rule
    (`kvcast.sim.engine`), computed (what the bound compares its plans with).

    Parts are decoded in arrival order, each when the GPU is free, except a part past the first
    tier that would end after the deadline D (skipped). The receiver proceeds at P = the last
    part's decode end if it was decoded, else max(D, the first tier's last decode end); every
    decoded part ends by P, later arrivals are dropped, and the first token ends one step after."""
    parts = tier_parts(
        obs.next_sizes, obs.decode_time_s, tiers, "importance-first streaming", obs.chunk_tokens
    )
    n = obs.chunks_left
    deadline = obs.now_s - obs.elapsed_s + obs.slo_s - obs.decode_step_s
    link_t, gpu_t = obs.now_s, obs.now_s + obs.gpu_queue_s
    decoded_end: list[float | None] = []  # per part: its decode end, None if skipped
    for k, (m, i, nbytes, work, _tokens) in enumerate(parts):
        start = link_t + (obs.ack_delay_s if k else 0.0) + obs.per_chunk_overhead_s
        arrive = start + transfer_s(i, nbytes, start)
        link_t = arrive
        begin = max(arrive, gpu_t)
        if m > 0 and begin + work > deadline:
            decoded_end.append(None)
            gpu_t = begin
            continue
        gpu_t = begin + work
        decoded_end.append(gpu_t)
    last, first_tier = decoded_end[-1], decoded_end[n - 1]
    assert first_tier is not None  # first-tier parts are never skipped
    proceed = last if last is not None else max(deadline, first_tier)
    decoded = [0] * len(tiers)
    for (m, *_), end in zip(parts, decoded_end, strict=True):
        if end is not None and end <= proceed:
            decoded[m] += 1
    return proceed + obs.decode_step_s, obs.quality[used_tier(tiers, decoded, n)]


def used_tier(tiers: Sequence[str], decoded: Sequence[int], n_chunks: int) -> str:
    """The level a request streamed by `tiers` is scored at: the last tier decoded for every
    chunk with every tier before it (`decoded`: parts of each tier decoded; the first tier always
    is). The simulator and the bound both take it from here, so they cannot disagree."""
    complete = 0
    while complete < len(tiers) and decoded[complete] == n_chunks:
        complete += 1
    return tiers[complete - 1]

"""What each chunk of a request costs, at every level and as TEXT, before any controller runs.

All controllers of one case see the same `RequestCosts` (same sampled chunk sizes and qualities),
so differences between them come from their decisions alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvcast.chunk_cost_file import ChunkCostTable
from kvcast.chunks import TEXT_BYTES_PER_TOKEN, TEXT_LEVEL, split_tokens
from kvcast.errors import InputError
from kvcast.profile_format import CodecProfile
from kvcast.reductions import kept_tokens

from .levels import expected_quality
from .receiver import Receiver


@dataclass(frozen=True)
class RequestCosts:
    tokens: tuple[int, ...]  # per chunk
    sizes: dict[str, tuple[int, ...]]  # bytes per level per chunk
    decode_s: dict[str, tuple[float, ...]]  # receiver decode time per level per chunk
    quality: dict[str, float]  # expected normalized quality per level and TEXT (sim.levels)
    text_sizes: tuple[int, ...]
    text_s: tuple[float, ...]  # prefill of the chunk given all earlier chunks as prefix
    decode_step_s: float
    # levels that send pruned text (LLMLingua): the receiver prefills them, as TEXT
    text_levels: frozenset[str] = frozenset()

    def sends_kv(self, level: str) -> bool:
        """Whether `level` sends KV (its transfer is a throughput sample: TEXT's few bytes,
        dominated by the path's delay, are not)."""
        return level != TEXT_LEVEL and level not in self.text_levels

    @property
    def n_chunks(self) -> int:
        return len(self.tokens)


def text_costs(
    tokens: tuple[int, ...], receiver: Receiver
) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """TEXT: every token's id, prefilled; and the first-token step after the whole context."""
    text_sizes, text_s = pruned_text_costs(tokens, 1.0, receiver)
    return text_sizes, text_s, receiver.prefill.decode_step_s(int(sum(tokens)))


def pruned_text_costs(
    tokens: tuple[int, ...], tokens_kept: float, receiver: Receiver
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Text of a share of each chunk's tokens (1.0: TEXT; less: a pruned-text level, kind
    "reduction", payload "text"): per chunk, the bytes of the kept tokens' ids (rounded as the
    pruning rounds) and their prefill after every earlier chunk as prefix (the most the
    receiver's cache can hold before it)."""
    kept = [kept_tokens(t, tokens_kept) for t in tokens]
    prefix = np.concatenate([[0], np.cumsum(tokens)[:-1]]).astype(int)
    seconds = tuple(
        receiver.prefill.prefill_s(k, int(p)) for k, p in zip(kept, prefix, strict=True)
    )
    return tuple(k * TEXT_BYTES_PER_TOKEN for k in kept), seconds


class ProfileCoster:
    """Costs from a codec profile: per chunk, one profiled chunk is drawn and its bits per element
    (at every level) times the target model's KV elements give the bytes. Quality is each level's
    expected quality (sim.levels), the same for every chunk."""

    def __init__(
        self,
        profile: CodecProfile,
        kv_elements_per_token: int,
        receiver: Receiver,
        chunk_tokens: int,
    ) -> None:
        self.profile = profile
        self.kv_elements_per_token = kv_elements_per_token
        self.receiver = receiver
        self.chunk_tokens = chunk_tokens
        self.levels = profile.level_names
        self.quality = expected_quality(profile)
        # every level's per-chunk samples in one padded table (a level without samples: its mean)
        samples = [
            lv.bits_per_element.samples or [lv.bits_per_element.mean] for lv in profile.levels
        ]
        self._text = {lv.name: lv.tokens_kept for lv in profile.levels if lv.payload == "text"}
        self._counts = np.array([len(s) for s in samples], dtype=np.int64)
        self._bits = np.zeros((len(samples), int(self._counts.max())))
        for i, s in enumerate(samples):
            self._bits[i, : len(s)] = s

    def request_costs(self, context_tokens: int, rng: np.random.Generator) -> RequestCosts:
        tokens = split_tokens(context_tokens, self.chunk_tokens)
        draws = rng.integers(0, 2**31 - 1, size=len(tokens))
        elements = np.asarray(tokens, dtype=np.int64) * self.kv_elements_per_token
        rows = np.arange(len(self.levels))[:, None]
        bits = self._bits[rows, draws[None, :] % self._counts[:, None]]  # [level, chunk]
        nbytes = np.ceil(bits * elements[None, :] / 8.0).astype(np.int64).tolist()
        decode = self.receiver.decode_table(self.levels, elements).tolist()
        text_sizes, text_s, step = text_costs(tokens, self.receiver)
        sizes = {lv: tuple(b) for lv, b in zip(self.levels, nbytes, strict=True)}
        decode_s = {lv: tuple(d) for lv, d in zip(self.levels, decode, strict=True)}
        for lv, kept in self._text.items():
            sizes[lv], decode_s[lv] = pruned_text_costs(tokens, kept, self.receiver)
        return RequestCosts(
            tokens,
            sizes,
            decode_s,
            self.quality,
            text_sizes,
            text_s,
            step,
            frozenset(self._text),
        )


class MeasuredCoster:
    """Costs from a chunk-cost file (`costing: real_codec`): every request is the measured context,
    each chunk sent at a level costs the bytes its real encoding took and the decode time the
    receiver's `MeasuredDecode` holds for it. Quality is each level's expected quality, as above."""

    def __init__(
        self, table: ChunkCostTable, profile: CodecProfile, receiver: Receiver, where: str
    ) -> None:
        reduced = [lv.name for lv in profile.levels if lv.kind == "reduction"]
        if reduced:
            raise InputError(
                f"{where}: the codec profile {profile.name!r} has context-reduction levels "
                f"({', '.join(reduced[:3])}, ...), which a chunk-cost file does not measure; use "
                "'costing: profile' with it, or a profile without them"
            )
        missing = [lv for lv in profile.level_names if lv not in table.levels]
        if missing:
            raise InputError(
                f"{where}: the chunk-cost file {table.source} has no level {missing[0]!r} of the "
                f"codec profile {profile.name!r}; measure it again with this profile"
            )
        if table.kv_elements_per_token != profile.model.kv_elements_per_token:
            raise InputError(
                f"{where}: {table.model_id} has {table.kv_elements_per_token} KV elements per token "
                f"but the codec profile {profile.name!r} is for {profile.model.id} "
                f"({profile.model.kv_elements_per_token}); use the profile measured on that model"
            )
        self.table = table
        self.receiver = receiver
        self.levels = profile.level_names
        self.quality = expected_quality(profile)

    def request_costs(self, context_tokens: int, rng: np.random.Generator) -> RequestCosts:
        tokens = self.table.tokens
        sizes = {lv: self.table.levels[lv].bytes for lv in self.levels}
        elements = np.asarray(tokens, dtype=np.int64) * self.table.kv_elements_per_token
        table = self.receiver.decode_table(self.levels, elements).tolist()
        decode = {lv: tuple(d) for lv, d in zip(self.levels, table, strict=True)}
        text_sizes, text_s, step = text_costs(tokens, self.receiver)
        return RequestCosts(tokens, sizes, decode, self.quality, text_sizes, text_s, step)

"""The controller interface: one observation in, one level (or TEXT) out.

A controller sees what a real sender could know when it decides chunk `chunk_index` (time, SLO
budget left, sizes of the remaining chunks at every level, its own past throughputs, the receiver's
queue) and never the future of the link. Two rules break that on purpose and say so in their
names and docs: `oracle` (the offline optimum) and `cachegen-artifact` (the released CacheGen code
used each chunk's true bandwidth). They receive a `Foresight` from the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

TEXT = "TEXT"


@dataclass(frozen=True)
class Observation:
    now_s: float  # simulated time
    request_id: int
    chunk_index: int  # the chunk to decide
    n_chunks: int
    slo_s: float
    elapsed_s: float  # since the request arrived
    budget_left_s: float  # slo_s - elapsed_s
    levels: tuple[str, ...]  # the adaptive ladder, best quality first (no TEXT)
    quality: dict[str, float]  # normalized quality per level of the next chunk (and "TEXT")
    next_sizes: dict[str, tuple[int, ...]]  # bytes of chunks chunk_index..n_chunks-1 per level
    text_time_s: tuple[float, ...]  # estimated recompute time of each remaining chunk
    decode_time_s: dict[str, tuple[float, ...]]  # estimated decode time per level, remaining chunks
    past_throughputs_bps: tuple[float, ...]  # per finished KV-chunk transfer, bits/s
    past_transfer_times_s: tuple[float, ...]
    gpu_queue_s: float  # work queued on the receiver GPU ahead of this request's next chunk
    # Extras beyond the contract, all derivable by a real sender:
    text_sizes: tuple[int, ...] = ()  # bytes of each remaining chunk sent as TEXT (token ids)
    chunk_tokens: tuple[int, ...] = ()  # tokens of each remaining chunk
    decode_step_s: float = 0.0  # the final decode step that produces the first token
    per_chunk_overhead_s: float = 0.0
    chunk_quality: dict[str, tuple[float, ...]] | None = None  # quality per level, remaining chunks

    @property
    def chunks_left(self) -> int:
        return self.n_chunks - self.chunk_index


@runtime_checkable
class Controller(Protocol):
    name: str

    def reset(self, request_id: int) -> None: ...

    def choose(self, obs: Observation) -> str: ...


class Foresight(Protocol):
    """The future of the link, for the two controllers that are allowed to know it."""

    def transfer_time_s(
        self, request_id: int, chunk_index: int, nbytes: int, start_s: float
    ) -> float:
        """Seconds from `start_s` until `nbytes` sent alone at `start_s` have arrived."""
        ...

    def transfer_times_s(
        self, request_id: int, chunk_index: int, nbytes: np.ndarray, start_s: np.ndarray
    ) -> np.ndarray:
        """`transfer_time_s` for arrays of sizes and start times (same shape)."""
        ...


class NeedsForesight:
    """Mixin: the simulator calls `bind_foresight` before the first decision."""

    foresight: Foresight | None = None

    def bind_foresight(self, foresight: Foresight) -> None:
        self.foresight = foresight

    def _fs(self) -> Foresight:
        if self.foresight is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the simulator's foresight (bind_foresight)"
            )
        return self.foresight

"""The controller interface: one observation in, one level (or TEXT) out.

A controller sees what a real sender could know when it decides chunk `chunk_index` (time, SLO
budget left, sizes of the remaining chunks at every level, past throughputs on the link, the
receiver's queue, the objective it is scored by) and never the future of the link. It answers with
a `Decision`: the level (or TEXT) and the estimate behind it. Two rules break that on purpose and say so in their
names and docs: `oracle` (the offline optimum) and `cachegen-artifact` (the released CacheGen code
used each chunk's true bandwidth). They receive a `Foresight` from the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from kvcast.chunks import TEXT_LEVEL
from kvcast.objective import Objective

TEXT = TEXT_LEVEL  # the text fallback, re-exported for controllers (kvcast.chunks defines it)


class LinkHistory:
    """Throughput samples of every finished KV-chunk transfer on the link, any request, oldest
    first: what the sender has measured so far. Each sample also keeps how many of the sender's
    transfers shared the link while it ran (time-averaged, itself included), so a controller can
    tell a busy link from a slow one. Append-only; the properties are read-only views (no copy),
    so an observation costs nothing however long the run."""

    def __init__(self) -> None:
        self._data = np.empty((3, 64))  # time, throughput, flows sharing
        self._n = 0

    def add(self, t_s: float, bps: float, flows: float = 1.0) -> None:
        if self._n == self._data.shape[1]:
            self._data = np.concatenate([self._data, np.empty_like(self._data)], axis=1)
        self._data[:, self._n] = (t_s, bps, flows)
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def _view(self, row: int) -> np.ndarray:
        v = self._data[row, : self._n]
        v.flags.writeable = False
        return v

    @property
    def times_s(self) -> np.ndarray:
        """When each transfer finished (arrived), seconds."""
        return self._view(0)

    @property
    def throughputs_bps(self) -> np.ndarray:
        """Each transfer's bytes over its time on the wire (the one-way delay taken off), bits/s."""
        return self._view(1)

    @property
    def flows(self) -> np.ndarray:
        """How many of the sender's transfers were on the link during each (mean over its time)."""
        return self._view(2)


@dataclass(frozen=True)
class Observation:
    """What the sender knows when it decides chunk `chunk_index` of one request."""

    now_s: float  # simulated time
    request_id: int
    chunk_index: int  # the chunk to decide
    n_chunks: int
    slo_s: float
    elapsed_s: float  # since the request arrived
    budget_left_s: float  # slo_s - elapsed_s
    # The adaptive ladder: the profile's size-vs-quality Pareto frontier (optionally restricted by
    # the scenario's `levels:`), largest first. On a frontier larger means better, so this is
    # also best quality first.
    levels: tuple[str, ...]
    # Expected (profile-mean) normalized quality of every level of the profile and of "TEXT",
    # never above 1.0: what decisions are made on (the same for every chunk).
    quality: Mapping[str, float]
    next_sizes: Mapping[str, tuple[int, ...]]  # bytes of chunks chunk_index.. per profile level
    text_time_s: tuple[float, ...]  # estimated recompute time of each remaining chunk
    decode_time_s: Mapping[str, tuple[float, ...]]  # decode time per level, remaining chunks
    past_throughputs_bps: tuple[float, ...]  # this request's finished KV-chunk transfers, bits/s
    past_transfer_times_s: tuple[float, ...]
    gpu_queue_s: float  # work queued on the receiver GPU ahead of this request's next chunk
    # Extras beyond the contract, all derivable by a real sender:
    text_sizes: tuple[int, ...] = ()  # bytes of each remaining chunk sent as TEXT (token ids)
    chunk_tokens: tuple[int, ...] = ()  # tokens of each remaining chunk
    decode_step_s: float = 0.0  # the final decode step that produces the first token
    per_chunk_overhead_s: float = 0.0
    request_tokens: int = 0  # tokens of the whole request (all chunks)
    quality_so_far: float = 0.0  # sum over chunks already sent of tokens x quality / request_tokens
    link_delay_s: float = 0.0  # the path's one-way delay (known: the sender measures its RTT)
    ack_delay_s: float = 0.0  # after a chunk arrives, the sender learns it this much later
    link_history: LinkHistory | None = None  # every earlier KV transfer on the link, any request
    other_transfers: int = 0  # other requests' chunks on the link at this moment
    objective: Objective = field(default_factory=Objective)

    @property
    def chunks_left(self) -> int:
        return self.n_chunks - self.chunk_index

    @property
    def deadline_s(self) -> float:
        """Absolute time the first token is due."""
        return self.now_s + self.budget_left_s


@dataclass(frozen=True)
class Decision:
    """A controller's choice for one chunk, with the estimate behind it (recorded per chunk, so a
    report shows why a level was chosen). NaN: the controller has no such estimate."""

    level: str  # a profile level or TEXT
    est_bandwidth_bps: float = math.nan  # the link throughput it assumed for this chunk
    est_ttft_s: float = math.nan  # the request's first-token time it projected (from arrival)
    p_on_time: float = math.nan  # its probability that the request meets its SLO


@runtime_checkable
class Controller(Protocol):
    name: str

    def reset(self, request_id: int) -> None: ...

    def choose(self, obs: Observation) -> Decision: ...


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

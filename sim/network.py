"""The network path as the engine sees it: `transfer(request_id, chunk_index, nbytes)` returns a
SimPy event that fires when the bytes have arrived, and `foresight()` answers the same question
ahead of time for the two controllers allowed to know the future (oracle, cachegen-artifact).

Two kinds:
- `PerChunkPath`: CacheGen's artifact setting, one bandwidth per (request, chunk), e.g. i.i.d.
  uniform 0.1-10 Gbps. Requests do not contend (as in the artifact); there is no time continuity.
- `TraceLinkPath`: one shared `kvcast.sim.link.Link` driven by a trace; concurrent requests share
  it. Its foresight is the trace's answer for a flow alone on the link.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import simpy

from .link import Link, transfer_time, transfer_times


class PerChunkPath:
    def __init__(
        self, env: simpy.Environment, bandwidth_bps: Sequence[Sequence[float]], delay_s: float = 0.0
    ) -> None:
        self.env = env
        self.bw = bandwidth_bps  # [request_id][chunk_index]
        self.delay_s = float(delay_s)

    def _time(self, request_id: int, chunk_index: int, nbytes: int) -> float:
        return self.delay_s + nbytes * 8.0 / self.bw[request_id][chunk_index]

    def transfer(self, request_id: int, chunk_index: int, nbytes: int) -> simpy.Event:
        dt = self._time(request_id, chunk_index, nbytes)
        return self.env.timeout(dt, value=self.env.now + dt)

    def transfer_time_s(
        self, request_id: int, chunk_index: int, nbytes: int, start_s: float
    ) -> float:
        return self._time(request_id, chunk_index, nbytes)

    def transfer_times_s(
        self, request_id: int, chunk_index: int, nbytes: np.ndarray, start_s: np.ndarray
    ) -> np.ndarray:
        return (
            self.delay_s + np.asarray(nbytes, dtype=float) * 8.0 / self.bw[request_id][chunk_index]
        )


class TraceForesight:
    """The trace's answer for a flow alone on the link (what the oracle may know)."""

    def __init__(self, trace: Any, **link_opts: Any) -> None:
        self.trace = trace
        self.link_opts = {k: v for k, v in link_opts.items() if k in ("mode", "delay_s")}

    def transfer_time_s(
        self, request_id: int, chunk_index: int, nbytes: int, start_s: float
    ) -> float:
        return transfer_time(self.trace, nbytes, start_s, **self.link_opts) - start_s

    def transfer_times_s(
        self, request_id: int, chunk_index: int, nbytes: np.ndarray, start_s: np.ndarray
    ) -> np.ndarray:
        start = np.asarray(start_s, dtype=float)
        return (
            transfer_times(self.trace, np.asarray(nbytes, dtype=float), start, **self.link_opts)
            - start
        )


class TraceLinkPath(TraceForesight):
    """Adapter over the shared trace-driven `Link` (kvcast.sim.link); requests share it."""

    def __init__(self, env: simpy.Environment, trace: Any, **link_opts: Any) -> None:
        super().__init__(trace, **link_opts)
        self.env = env
        self.link = Link(env, trace, **link_opts)

    @property
    def delay_s(self) -> float:
        """The one-way delay a sender would know (0 where it varies with a sabre trace)."""
        d = self.link.delay_s
        return 0.0 if math.isnan(d) else d

    def transfer(self, request_id: int, chunk_index: int, nbytes: int) -> simpy.Event:
        return self.link.transfer(nbytes, flow=request_id)

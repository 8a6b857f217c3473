"""How fast the link emulator carries a trace faithfully (`kvcast bench emulator`).

For each rate: a constant-rate trace, one bulk transfer of `seconds` worth of bytes sent at once
through the relay (its own process) to a sink in this process. Faithful means the last byte
arrives when the trace says, `delay + bytes * 8 / rate` after the send: the table gives the
relative error of that time and how late the relay wrote what the link delivered. The ceiling is
the highest rate whose error stays within `tolerance`. `busy_cores` processes spin meanwhile,
standing in for a receiver that decodes on a core of its own.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any

from kvcast.traces.trace import from_steps

from .relay import RelayConfig, relay_process
from .session import START_SLACK_S, _await


@dataclass(frozen=True)
class RatePoint:
    mbps: float
    flows: int
    bytes: int
    expected_s: float
    measured_s: float
    late_max_s: float

    @property
    def error(self) -> float:
        return (self.measured_s - self.expected_s) / self.expected_s


def _spin() -> None:
    while True:
        pass


def measure_rate(
    mbps: float,
    seconds: float = 2.0,
    delay_s: float = 0.01,
    flows: int = 1,
    dilation: float = 1.0,
    busy_cores: int = 0,
    queue_bytes: float = math.inf,
) -> RatePoint:
    """One bulk transfer (split over `flows` connections) at `mbps`, the trace's rate, through a
    forward queue of `queue_bytes` (flow control beyond it)."""
    trace = from_steps("constant", [0.0, 1.0], [mbps * 1e6])
    nbytes = int(mbps * 1e6 / 8 * seconds / flows)
    ctx = mp.get_context("spawn")
    spinners = [ctx.Process(target=_spin, daemon=True) for _ in range(busy_cores)]
    for proc in spinners:
        proc.start()
    try:
        took, stats = asyncio.run(_bulk(trace, nbytes, flows, delay_s, dilation, queue_bytes))
    finally:
        for proc in spinners:
            proc.terminate()
            proc.join(5.0)
    expected = delay_s + nbytes * flows * 8 / (mbps * 1e6)
    return RatePoint(mbps, flows, nbytes * flows, expected, took / dilation, stats["late_max_s"])


async def _bulk(
    trace: Any, nbytes: int, flows: int, delay_s: float, dilation: float, queue_bytes: float
) -> tuple[float, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    total, got = nbytes * flows, [0]
    done: asyncio.Future[float] = loop.create_future()

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got[0] += len(data)
            if got[0] >= total and not done.done():
                done.set_result(time.monotonic())

    server = await loop.create_server(Sink, "127.0.0.1", 0)
    cfg = RelayConfig(
        server.sockets[0].getsockname()[1],
        trace,
        delay_s,
        queue_bytes=queue_bytes,
        dilation=dilation,
    )
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=relay_process, args=(cfg, child), daemon=True, name="kvcast-relay")
    proc.start()
    try:
        port = (await asyncio.to_thread(_await, parent, "ready", proc, 30.0))[1]
        parent.send(("go", time.monotonic() + START_SLACK_S))
        await asyncio.sleep(START_SLACK_S)
        writers = [(await asyncio.open_connection("127.0.0.1", port))[1] for _ in range(flows)]
        payload = bytes(nbytes)
        t0 = time.monotonic()
        for w in writers:
            w.write(payload)
        # a relay that cannot keep up still ends: at most 10 s past ten times the trace's time
        took = (
            await asyncio.wait_for(done, 10.0 + 10 * dilation * total * 8 / trace.mean_bps()) - t0
        )
        for w in writers:
            w.close()
        parent.send(("stop",))
        stats = (await asyncio.to_thread(_await, parent, "stats", proc, 10.0))[1]
    finally:
        proc.join(5.0)
        if proc.is_alive():
            proc.terminate()
        server.close()
    return took, stats


def format_points(points: list[RatePoint], tolerance: float) -> str:
    lines = [
        f"{'Mbit/s':>8} {'flows':>5} {'MB':>8} {'expected s':>11} {'measured s':>11} {'error':>8} {'late max ms':>12}"
    ]
    for p in points:
        lines.append(
            f"{p.mbps:>8g} {p.flows:>5} {p.bytes / 1e6:>8.1f} {p.expected_s:>11.4f} "
            f"{p.measured_s:>11.4f} {100 * p.error:>7.2f}% {1e3 * p.late_max_s:>12.2f}"
        )
    ok = [p.mbps for p in points if abs(p.error) <= tolerance]
    lines.append(
        f"ceiling: {max(ok):g} Mbit/s (highest rate within {100 * tolerance:g}%)"
        if ok
        else f"no rate within {100 * tolerance:g}%"
    )
    return "\n".join(lines)

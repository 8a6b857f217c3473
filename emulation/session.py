"""One emulation session: the receiver's process for the whole session, a relay process per unit,
the sender in this process; each unit (a controller on a case) gives the simulator's records.

Processes start with the `spawn` method (no copy of this process's state) and are stopped when
the session ends, on an error, Ctrl-C or SIGTERM alike: the session's `close` terminates what is
still running, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kvcast.errors import InputError
from kvcast.sim.engine import SimResult
from kvcast.sim.inputs import CaseInputs, Setup
from kvcast.sim.network import TraceForesight
from kvcast.sim.scenario import Scenario
from kvcast.sim.units import run_controller

from .receiver import ReceiverConfig, receiver_process
from .relay import RelayConfig, relay_process
from .sender import SenderClock, SenderRun
from .wire import WireError

START_SLACK_S = 0.3  # real seconds between a unit's set-up and its trace time 0
_READY_TIMEOUT_S = 120.0  # the receiver imports torch and the codec
_PACKET_BYTES = 1500


@dataclass(frozen=True)
class EmulationOptions:
    dilation: float = 1.0  # play the trace this many times slower (docs/emulation.md)
    reverse_delay_s: float | None = None  # the acknowledgements' one-way delay; None: link.delay_s

    def ack_delay(self, sc: Scenario) -> float:
        return sc.link.delay_s if self.reverse_delay_s is None else self.reverse_delay_s


def emulated_scenario(sc: Scenario, opts: EmulationOptions) -> Scenario:
    """The scenario as the emulation runs it: the sender learns of an arrival one reverse delay
    later (`link.ack_delay_s`), so the simulator's bound and its comparison runs match it."""
    if not (opts.dilation >= 1 and math.isfinite(opts.dilation)):
        raise InputError(f"dilation: expected a number >= 1, got {opts.dilation}")
    if sc.link.kind != "trace":
        raise InputError(
            f"{sc.source}: field 'link.kind': emulation needs a trace-driven link "
            f"('trace' or 'synthetic'), not {sc.link.kind!r}"
        )
    if sc.costing != "real_codec":
        raise InputError(
            f"{sc.source}: field 'costing': emulation sends the real encoded chunks and the "
            "receiver decodes them: use 'costing: real_codec' with a 'real_codec:' section"
        )
    if sc.link.mode != "mahimahi":
        raise InputError(
            f"{sc.source}: field 'link.mode': emulation runs mm-link semantics ('mahimahi')"
        )
    return replace(sc, link=replace(sc.link, ack_delay_s=opts.ack_delay(sc)))


@dataclass
class Emulator:
    """Runs units over real sockets. Use as a context manager."""

    payloads: Any  # kvcast.profiling.chunk_payloads.ChunkPayloads
    options: EmulationOptions = field(default_factory=EmulationOptions)
    model: str | None = None  # the receiver runs TEXT and the first-token step with this model
    relay_stats: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._receiver: Any = None
        self._conn: Any = None
        self._relay: Any = None
        self._chunks: dict[str, list[bytes]] = {}

    def __enter__(self) -> Emulator:
        parent, child = self._ctx.Pipe()
        warm = tuple(self.payloads.path(lv, 0) for lv in self.payloads.levels)
        cfg = ReceiverConfig(self.payloads.model_tables, warmup=warm, model=self.model)
        self._receiver = self._ctx.Process(
            target=receiver_process, args=(cfg, child), name="kvcast-receiver", daemon=True
        )
        self._receiver.start()
        self._conn = parent
        self.receiver_port = _await(parent, "ready", self._receiver, _READY_TIMEOUT_S)[1]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for proc, conn in ((self._relay, None), (self._receiver, self._conn)):
            if proc is None:
                continue
            if conn is not None and proc.is_alive():
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
            proc.join(2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        self._relay = self._receiver = None

    def _payload_chunks(self, level: str) -> list[bytes]:
        if level not in self._chunks:
            n = self.payloads.n_chunks
            self._chunks[level] = [self.payloads.read(level, i) for i in range(n)]
        return self._chunks[level]

    def _text_chunks(self, tokens: tuple[int, ...]) -> list[bytes]:
        """Each chunk's token ids as a TEXT chunk carries them (int32; zeros where the source
        has no tokens: the receiver then only charges the modelled prefill)."""
        ids = self.payloads.token_ids()
        bounds = np.concatenate([[0], np.cumsum(tokens)])
        if ids is None:
            return [bytes(4 * t) for t in tokens]
        return [
            ids[a:b].astype("<i4").tobytes() for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    async def _watched(self, coro: Any) -> Any:
        """Run the sender; if the receiver's or the relay's process dies meanwhile, stop it with
        an error that says which (it would otherwise wait for replies that never come)."""
        task = asyncio.ensure_future(coro)
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            dead = [p for p in (self._receiver, self._relay) if p is not None and not p.is_alive()]
            if dead and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise RuntimeError(
                    f"emulation: the {dead[0].name} process exited ({dead[0].exitcode})"
                )
        return task.result()

    def _stop_relay(self, conn: Any, failed: bool) -> None:
        """Stop the unit's relay and keep its stats; after a failure, whatever it manages (the
        failure is what the user sees)."""
        relay, self._relay = self._relay, None
        try:
            conn.send(("stop",))
            self.relay_stats.append(_await(conn, "stats", relay, 10.0)[1])
        except Exception:
            if not failed:
                raise
        finally:
            relay.join(5.0)
            if relay.is_alive():
                relay.terminate()
                relay.join(2.0)

    def _collect(self, timeout_s: float = 30.0) -> tuple[list[Any], list[str]]:
        """The receiver's records of the unit: its lane's chunk times and its errors."""
        self._conn.send(("collect",))
        _, times, errors = _await(self._conn, "records", self._receiver, timeout_s)
        return times, errors

    def _receiver_errors(self) -> str:
        with contextlib.suppress(Exception):
            errors = self._collect(10.0)[1]  # the run has failed already: do not wait long
            if errors:
                return f"; the receiver: {errors[0]}"
        return ""

    def run_unit(
        self,
        sc: Scenario,
        setup: Setup,
        ci: CaseInputs,
        ctrl: Any,
        on_request_done: Callable[[], None] | None = None,
    ) -> SimResult:
        """One controller on one case over the emulated link (`sim.units.run_unit`'s `run`).
        The bound stays the simulator's: it plans each request alone on the modelled link."""
        if getattr(ctrl, "is_bound", False):
            return run_controller(sc, setup, ci, ctrl, on_request_done)
        k = self.options.dilation
        link = sc.link
        parent, port = self._start_relay(
            RelayConfig(
                self.receiver_port,
                ci.trace,
                link.delay_s,
                None,
                link.ack_delay_s,
                _queue_limit_bytes(sc),
                k,
            )
        )
        self._conn.send(("unit", k))
        _await(self._conn, "ok", self._receiver, 30.0)
        origin = time.monotonic() + START_SLACK_S
        parent.send(("go", origin))
        if hasattr(ctrl, "bind_foresight"):  # cachegen-artifact: the trace's own answer
            ctrl.bind_foresight(TraceForesight(ci.trace, mode=link.mode, delay_s=link.delay_s))
        run = SenderRun(
            ctrl,
            setup.ladder,
            {lv: self._payload_chunks(lv) for lv in self.payloads.levels},
            self._text_chunks(ci.costs[0].tokens),
            port,
            SenderClock(origin, k),
            link.delay_s,
            link.ack_delay_s,
            sc.workload.per_chunk_overhead_s,
            sc.objective,
            on_request_done,
        )
        failed = True
        try:
            requests, chunks = asyncio.run(self._watched(run.run(ci.requests, ci.costs)))
            failed = False
        except WireError as exc:  # the receiver closed a connection: say why, if it knows
            raise RuntimeError(f"emulation: {exc}{self._receiver_errors()}") from None
        finally:
            self._stop_relay(parent, failed)
        times, errors = self._collect()
        if errors:
            raise RuntimeError(f"emulation: the receiver failed: {errors[0]}")
        by_key = {(t.request_id, t.chunk_index): t for t in times}
        for row in chunks:  # the receiver's clock to trace time
            t = by_key[(row.request_id, row.chunk_index)]
            row.gpu_start_s = (t.gpu_start - origin) / k
            row.gpu_end_s = (t.gpu_end - origin) / k
        return SimResult(requests, chunks, run.decisions)

    def _start_relay(self, cfg: RelayConfig) -> tuple[Any, int]:
        """A relay process for one unit: its control pipe and its port."""
        parent, child = self._ctx.Pipe()
        self._relay = self._ctx.Process(
            target=relay_process, args=(cfg, child), name="kvcast-relay", daemon=True
        )
        self._relay.start()
        return parent, _await(parent, "ready", self._relay, 30.0)[1]


def _queue_limit_bytes(sc: Scenario) -> float:
    """The forward queue's limit in bytes (`queue: droptail`; else none)."""
    link = sc.link
    if link.queue != "droptail":
        return math.inf
    return min(link.queue_bytes or math.inf, (link.queue_packets or math.inf) * _PACKET_BYTES)


def _await(conn: Any, what: str, proc: Any, timeout_s: float) -> tuple[Any, ...]:
    """The next message from a child, which must be `what`; a child that died or failed is an
    error that says so (never a hang)."""
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.1):
        if not proc.is_alive():
            raise RuntimeError(f"emulation: the {proc.name} process exited ({proc.exitcode})")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"emulation: no {what!r} from the {proc.name} process in {timeout_s:g} s"
            )
    msg = conn.recv()
    if msg[0] == "failed":
        raise RuntimeError(f"emulation: the {proc.name} process failed:\n{msg[1]}")
    if msg[0] != what:
        raise RuntimeError(f"emulation: expected {what!r} from {proc.name}, got {msg[0]!r}")
    return msg

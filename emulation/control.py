"""How the emulation's child processes (relay, receiver) hear from the parent, and stop with it.

A child reads the parent's pipe inside its event loop; when the parent is gone (the pipe's EOF:
it exited, was killed or crashed), the child gets a stop message, so it never outlives the run.
Children ignore Ctrl-C, which reaches the whole process group: the parent stops them itself,
after its own clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from multiprocessing.connection import Connection
from typing import Any

STOP = ("stop",)


def parent_messages(conn: Connection) -> asyncio.Queue[Any]:
    """The parent's messages as an asyncio queue; `STOP` once the parent is gone."""
    loop = asyncio.get_running_loop()
    messages: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            messages.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            messages.put_nowait(STOP)

    loop.add_reader(conn.fileno(), readable)
    return messages


def tell_parent(conn: Connection, message: tuple[Any, ...]) -> None:
    """Send to the parent if it is still there."""
    with contextlib.suppress(OSError):
        conn.send(message)


def child_start() -> None:
    """At a child's start: Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

"""The few async primitives the relay's hot paths use, taken straight from trio
when the code runs under trio (anyio's wrappers look the backend up on every
call), and from anyio otherwise (asyncio).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import sniffio
import trio

__all__ = ["Backend", "EventLike", "current_backend", "read_ready"]


class EventLike(Protocol):
    """What both ``trio.Event`` and ``anyio.Event`` offer."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


class Backend:
    """An event factory and the checkpoints, for one async library.

    Attributes:
        trio: True under trio.
        event: makes a new event.
        checkpoint_if_cancelled: raises if cancelled, else returns at once.
        cancel_shielded_checkpoint: yields to the scheduler without a cancel point.
        current_time: the library's clock (seconds).
        deadline_scope: a cancel scope with the given deadline on that clock
            (``cancelled_caught`` tells whether it expired).
    """

    __slots__ = (
        "cancel_shielded_checkpoint",
        "checkpoint_if_cancelled",
        "current_time",
        "deadline_scope",
        "event",
        "trio",
    )

    def __init__(self, on_trio: bool) -> None:
        self.trio = on_trio
        self.event: Callable[[], EventLike]
        self.checkpoint_if_cancelled: Callable[[], Awaitable[None]]
        self.cancel_shielded_checkpoint: Callable[[], Awaitable[None]]
        self.current_time: Callable[[], float]
        self.deadline_scope: Callable[[float], AbstractContextManager[Any]]
        if on_trio:
            self.event = trio.Event
            self.checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
            self.cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
            self.current_time = trio.current_time
            self.deadline_scope = trio.move_on_at
        else:
            self.event = anyio.Event
            self.checkpoint_if_cancelled = anyio.lowlevel.checkpoint_if_cancelled
            self.cancel_shielded_checkpoint = anyio.lowlevel.cancel_shielded_checkpoint
            self.current_time = anyio.current_time
            self.deadline_scope = _anyio_scope


def _anyio_scope(deadline: float) -> AbstractContextManager[Any]:
    return anyio.CancelScope(deadline=deadline)


_TRIO = Backend(True)
_ANYIO = Backend(False)


def current_backend() -> Backend:
    """The primitives of the running async library (anyio's outside of one)."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return _ANYIO
    return _TRIO if library == "trio" else _ANYIO


async def read_ready(fd: int, size: int, *, drained: bool = False) -> tuple[bytes, bool]:
    """Up to ``size`` bytes from the socket ``fd`` under trio (``b""`` at its
    end), read at once while data is there, and whether this waited for them
    (a yield to the scheduler). ``drained``: the last read emptied the socket
    (it returned less than it asked for): wait until it is readable first
    instead of trying a read that finds nothing.

    Raises:
        OSError: the connection failed.
        trio.ClosedResourceError: the socket was closed while this waited.
    """
    waited = False
    if drained:
        await trio.lowlevel.wait_readable(fd)
        waited = True
    while True:
        try:
            return os.read(fd, size), waited
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            waited = True

"""Small helpers shared by several layers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from .errors import InternalError

__all__ = ["guarded", "open_unwrapped_nursery", "receive_parked"]

T = TypeVar("T")


async def receive_parked(receive_nowait: Callable[[], T], lot: trio.lowlevel.ParkingLot) -> T:
    """The blocking form of ``receive_nowait``: park on ``lot`` while it would block.

    The producer unparks ``lot`` when it adds an item. A checkpoint, like trio's
    own channel operations.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    while True:
        try:
            item = receive_nowait()
        except trio.WouldBlock:
            await lot.park()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item


@asynccontextmanager
async def open_unwrapped_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose lone exception leaves unwrapped, not as an ExceptionGroup of one.

    Callers of our context managers should see their own exception (or ours)
    exactly as raised; a group appears only when several things really failed.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        # The nursery wraps whatever one task (or the body) raised in a group of
        # one; that level is ours and goes, even when what was raised is a group.
        if len(group.exceptions) == 1:
            lone = group.exceptions[0]
            raise lone from lone.__cause__  # its own cause kept; the group hidden
        raise


async def guarded(
    function: Callable[..., Awaitable[object]],
    *args: object,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one of a node's own tasks; an unexpected exception from it (a bug:
    network failures are handled where they happen) becomes one InternalError."""
    try:
        if task_status is trio.TASK_STATUS_IGNORED:
            await function(*args)
        else:
            await function(*args, task_status=task_status)
    except Exception as exc:
        cause: BaseException = exc
        while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
            cause = cause.exceptions[0]
        raise InternalError(f"the node failed: {cause!r}") from cause

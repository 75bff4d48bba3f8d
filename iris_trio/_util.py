"""Small helpers shared by several layers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

__all__ = ["open_unwrapped_nursery", "receive_parked"]

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

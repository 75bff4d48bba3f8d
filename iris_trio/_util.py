"""Small helpers shared by several layers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_unwrapped_nursery"]


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
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise

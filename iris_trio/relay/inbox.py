"""A bounded, closeable queue on anyio: what the relay client hands out.

Events and broadcasts use it with a capacity (the oldest is dropped and counted
when a slow reader lets it fill); requests and tunnels without one (the relay
bounds how many it hands over). Each item wakes one waiting receiver, so a
pool of receivers (a service's workers) does not all wake for every item.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import anyio

from .backend import EventLike, current_backend

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items in arrival order; ``receive()`` waits for the next.

    Once closed, the items left are still received, then ``receive()`` raises
    ``anyio.EndOfStream`` (closed cleanly) or ``anyio.BrokenResourceError``
    (closed with a reason).
    """

    def __init__(self, capacity: int | None = None) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._backend = current_backend()
        # One event per waiting receiver, oldest first; an item sets one.
        self._waiters: collections.deque[EventLike] = collections.deque()
        self._end: BaseException | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T) -> None:
        """Add ``item`` (dropping the oldest one if full); ignored once closed."""
        if self._end is not None:
            return
        if self._capacity is not None and len(self._items) >= self._capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        if self._waiters:
            self._waiters.popleft().set()

    def close(self, reason: str = "") -> None:
        """No more items: "" ends cleanly, otherwise receivers get the reason."""
        if self._end is None:
            self._end = anyio.BrokenResourceError(reason) if reason else anyio.EndOfStream()
            while self._waiters:
                self._waiters.popleft().set()

    def receive_nowait(self) -> T:
        """The next item; raises anyio.WouldBlock if none is waiting."""
        if self._items:
            return self._items.popleft()
        if self._end is not None:
            raise self._end
        raise anyio.WouldBlock

    async def receive(self) -> T:
        """Wait for the next item."""
        backend = self._backend
        await backend.checkpoint_if_cancelled()
        while True:
            try:
                item = self.receive_nowait()
            except anyio.WouldBlock:
                await self._wait(backend.event())
            else:
                await backend.cancel_shielded_checkpoint()
                return item

    async def _wait(self, arrived: EventLike) -> None:
        self._waiters.append(arrived)
        try:
            await arrived.wait()
        except BaseException:
            if not arrived.is_set():
                self._waiters.remove(arrived)
            elif self._items and self._waiters:  # woken for an item it leaves: pass it on
                self._waiters.popleft().set()
            raise

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.receive()
            except anyio.EndOfStream:
                return

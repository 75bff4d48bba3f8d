"""Bounded receive channels for events (publish/subscribe) and broadcasts."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import trio

from .._util import receive_parked

__all__ = ["Subscription", "SubscriptionStatistics"]


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """Counters of one subscription."""

    delivered: int
    dropped: int
    buffered: int


class Subscription(trio.abc.ReceiveChannel[bytes]):
    """The events of one topic, as a trio receive channel.

    The buffer is bounded; when an event arrives while it is full, the oldest
    buffered event is dropped and counted (``statistics().dropped``): a
    subscriber that falls behind loses events, nobody else does.
    """

    def __init__(
        self, topic: str, capacity: int, *, tree: int, on_close: Callable[[Subscription], None]
    ) -> None:
        self.topic = topic
        self.tree = tree
        self._on_close = on_close
        self._capacity = capacity
        self._buffer: collections.deque[bytes] = collections.deque()
        self._waiting = trio.lowlevel.ParkingLot()
        self._closed = False
        self._delivered = 0
        self._dropped = 0

    def _push(self, data: bytes) -> bool:
        """Buffer an arriving event (called synchronously by the node); True if
        the oldest buffered event was dropped to make room."""
        dropped = len(self._buffer) >= self._capacity
        if dropped:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(data)
        self._delivered += 1
        self._waiting.unpark()
        return dropped

    def receive_nowait(self) -> bytes:
        """The next buffered event; raises trio.WouldBlock if there is none."""
        if self._closed:
            raise trio.ClosedResourceError("the subscription was closed")
        if not self._buffer:
            raise trio.WouldBlock
        return self._buffer.popleft()

    async def receive(self) -> bytes:
        """Wait for the next event. Raises trio.ClosedResourceError once closed."""
        return await receive_parked(self.receive_nowait, self._waiting)

    async def aclose(self) -> None:
        """Unsubscribe; pending and later receives raise trio.ClosedResourceError."""
        if not self._closed:
            self._closed = True
            self._waiting.unpark_all()
            self._on_close(self)
        await trio.lowlevel.checkpoint()

    def statistics(self) -> SubscriptionStatistics:
        """Events delivered to this subscription, dropped from it, still buffered."""
        return SubscriptionStatistics(self._delivered, self._dropped, len(self._buffer))

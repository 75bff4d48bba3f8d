"""Bounded receive channels for events (publish/subscribe) and broadcasts."""

from __future__ import annotations

from collections.abc import Callable

import trio

from .queue import BoundedQueue, Overflow, QueueStatistics

__all__ = ["Subscription", "SubscriptionStatistics"]

#: Counters of one subscription (``delivered``, ``dropped``, ``buffered``, ...).
SubscriptionStatistics = QueueStatistics


class Subscription(BoundedQueue[bytes]):
    """The events of one topic (or a cluster's broadcasts), as a trio receive channel.

    The buffer is bounded; when an event arrives while it is full, the oldest
    buffered event is dropped and counted (``statistics().dropped``): a
    subscriber that falls behind loses events, nobody else does.
    """

    def __init__(
        self, topic: str, capacity: int, *, tree: int, on_close: Callable[[Subscription], None]
    ) -> None:
        super().__init__(
            capacity, Overflow.DROP_OLDEST, closed_message="the subscription was closed"
        )
        self.topic = topic
        self.tree = tree
        self._on_close = on_close

    def _push(self, data: bytes) -> bool:
        """Buffer an arriving event (called synchronously by the node); True if
        the oldest buffered event was dropped to make room."""
        return not self.push(data)

    async def aclose(self) -> None:
        """Unsubscribe; pending and later receives raise trio.ClosedResourceError."""
        if self.close_nowait():
            self._on_close(self)
        await trio.lowlevel.checkpoint()

"""Bounded receive channels for events (publish/subscribe) and broadcasts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import trio

from .limits import DEFAULT_SUBSCRIPTION_BYTES
from .queue import BoundedQueue, ByteBudget, Overflow, QueueStatistics

__all__ = ["Subscription", "SubscriptionStatistics"]


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """Counters of one subscription.

    Attributes:
        delivered: events that arrived (dropped ones included).
        dropped: events dropped here because the buffer was full (this
            subscriber did not keep up).
        missed: events published while this subscription was open that never
            arrived (lost on the way, e.g. behind a partition), as told by the
            gaps in each publisher's sequence numbers. "Nothing was published"
            and "I missed it" differ here.
        buffered / buffered_bytes: events (and their bytes) waiting now.
    """

    delivered: int
    dropped: int
    missed: int
    buffered: int
    buffered_bytes: int


class Subscription(BoundedQueue[bytes]):
    """The events of one topic (or a cluster's broadcasts), as a trio receive channel.

    The buffer is bounded in events and in bytes: DEFAULT_SUBSCRIPTION_BYTES
    from the start (while the subscription joins its tree), then as
    ``bound_bytes()`` says (the node calls it before it hands the
    subscription out), alone and with the other subscriptions of a
    :class:`~iris_trio.patterns.queue.ByteBudget`. When an event arrives while
    it is full, the oldest buffered event is dropped and counted (``statistics().dropped``): a
    subscriber that falls behind loses events, nobody else does.

    From :meth:`Node.subscribe <iris_trio.Node.subscribe>` (or
    :meth:`Node.broadcasts <iris_trio.Node.broadcasts>`), whose ``async with``
    closes it. Example::

        async with node.subscribe("prices") as events:
            async for event in events:
                print(event, events.statistics().dropped)
    """

    def __init__(
        self, topic: str, capacity: int, *, tree: int, on_close: Callable[[Subscription], None]
    ) -> None:
        super().__init__(
            capacity,
            Overflow.DROP_OLDEST,
            max_bytes=DEFAULT_SUBSCRIPTION_BYTES,
            size=len,
            closed_message="the subscription was closed",
        )
        self.topic = topic
        self.tree = tree
        self._on_close = on_close
        #: Events known to have been missed (see SubscriptionStatistics).
        self.missed = 0

    def bound_bytes(self, max_bytes: int, budget: ByteBudget | None = None) -> None:
        """Buffer at most ``max_bytes`` of events (one event is kept whatever
        its size) and, with ``budget``, at most its bytes together with its
        other members. What is already buffered beyond goes now, oldest first
        (counted as dropped). Not a checkpoint."""
        self.limit_bytes(max_bytes, size=len, budget=budget)
        while len(self) > 1 and self.buffered_bytes > max_bytes:
            self._drop_oldest()
        if budget is not None:
            budget.make_room(0)

    def statistics(self) -> SubscriptionStatistics:  # type: ignore[override]
        """The subscription's counters (see :class:`SubscriptionStatistics`)."""
        queue: QueueStatistics = super().statistics()
        return SubscriptionStatistics(
            delivered=queue.delivered,
            dropped=queue.dropped,
            missed=self.missed,
            buffered=queue.buffered,
            buffered_bytes=queue.buffered_bytes,
        )

    def _push(self, data: bytes) -> bool:
        """Buffer an arriving event (called synchronously by the node); True if
        the oldest buffered event was dropped to make room."""
        return not self.push(data)

    async def aclose(self) -> None:
        """Unsubscribe; pending and later receives raise trio.ClosedResourceError.

        Cancellation: it has unsubscribed before its checkpoint: a cancelled
        ``aclose()`` has closed the subscription.
        """
        if self.close_nowait():
            self._on_close(self)
        await trio.lowlevel.checkpoint()

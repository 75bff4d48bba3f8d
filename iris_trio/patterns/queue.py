"""The one bounded queue under every receiving side of the patterns.

Subscriptions, broadcast receivers, a member's incoming requests and its
incoming tunnels are all a :class:`BoundedQueue`: a trio receive channel with a
size in items (and optionally in bytes), a named :class:`Overflow` policy and
counters. Items are pushed synchronously by the node (no task switch per item)
and received by the application.

Several queues can also share a :class:`ByteBudget` (say every subscription of
one relay client, and all relay clients of a node): a push that would take the
budget beyond its bytes first drops the oldest item of the member queue holding
the most bytes, which is counted there as dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from .._util import receive_parked

__all__ = ["BoundedQueue", "ByteBudget", "Overflow", "QueueStatistics"]

T = TypeVar("T")


class Overflow(enum.Enum):
    """What a full queue does with one more item."""

    #: The oldest buffered item goes (counted as dropped): a receiver that falls
    #: behind loses the oldest events, nobody else does. For events.
    DROP_OLDEST = "drop-oldest"
    #: The new item is refused (counted as refused; ``push`` returns False) and
    #: its sender is told. For requests and tunnels, which have an answer.
    REFUSE = "refuse"


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStatistics:
    """Counters of one queue.

    Attributes:
        delivered: items pushed into the queue (dropped ones included).
        dropped: items dropped to make room (``DROP_OLDEST``).
        refused: items refused because the queue was full (``REFUSE``).
        expired: items skipped unreceived because they had expired.
        buffered / buffered_bytes: items (and their bytes) waiting now.
    """

    delivered: int
    dropped: int
    refused: int
    expired: int
    buffered: int
    buffered_bytes: int


class ByteBudget:
    """Bytes buffered by a group of queues, bounded together (see the module docstring).

    Args:
        max_bytes: the most bytes the member queues buffer together (one item
            is always admitted into an empty budget, whatever its size).
        parent: a wider budget this one also counts against (a node's total).

    Example (a node's: :attr:`Node.subscription_budget <iris_trio.Node.subscription_budget>`)::

        budget = node.subscription_budget
        print(f"subscriptions buffer {budget.used:,} of {budget.max_bytes:,} bytes")
    """

    def __init__(self, max_bytes: int, parent: ByteBudget | None = None) -> None:
        self.max_bytes = max_bytes
        self.parent = parent
        #: Bytes buffered now by the member queues (and those of child budgets).
        self.used = 0
        self._members: set[BoundedQueue[Any]] = set()
        self._fullest: BoundedQueue[Any] | None = None

    def _join(self, queue: BoundedQueue[Any]) -> None:
        budget: ByteBudget | None = self
        while budget is not None:
            budget._members.add(queue)
            budget = budget.parent

    def _leave(self, queue: BoundedQueue[Any]) -> None:
        budget: ByteBudget | None = self
        while budget is not None:
            budget._members.discard(queue)
            if budget._fullest is queue:
                budget._fullest = None
            budget = budget.parent

    def _charge(self, size: int) -> None:
        budget: ByteBudget | None = self
        while budget is not None:
            budget.used += size
            budget = budget.parent

    def _would_exceed(self, size: int) -> ByteBudget | None:
        """The narrowest budget of the chain that ``size`` more bytes would
        exceed while it holds anything; None if they fit."""
        budget: ByteBudget | None = self
        while budget is not None:
            if budget.used and budget.used + size > budget.max_bytes:
                return budget
            budget = budget.parent
        return None

    def _victim(self) -> BoundedQueue[Any]:
        """The member queue holding the most bytes (kept between calls while it
        still holds at least a fair share, so a flood costs no scan per item)."""
        fullest = self._fullest
        share = self.max_bytes // max(1, len(self._members))
        if fullest is None or not fullest._queue or fullest.buffered_bytes < share:
            fullest = max(self._members, key=lambda queue: queue.buffered_bytes)
            self._fullest = fullest
        return fullest

    def make_room(self, size: int) -> bool:
        """Drop oldest items until ``size`` more bytes fit; False if nothing
        more can be dropped (only possible while nothing is buffered)."""
        while (budget := self._would_exceed(size)) is not None:
            victim = budget._victim()
            if not victim._queue:
                return False
            victim._drop_oldest()
        return True


class BoundedQueue(trio.abc.ReceiveChannel[T], Generic[T]):
    """A bounded trio receive channel fed synchronously (see the module docstring).

    Args:
        capacity: the most items buffered.
        overflow: what happens to one more item (see :class:`Overflow`).
        max_bytes: the most bytes buffered (``size`` measures an item), if any.
        size: an item's size in bytes (default: none counted).
        expired: items for which this is true are skipped (counted) at receive.
        closed_message: what receiving from a closed queue says.
    """

    def __init__(
        self,
        capacity: int,
        overflow: Overflow,
        *,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
        expired: Callable[[T], bool] | None = None,
        closed_message: str = "the receiver was closed",
    ) -> None:
        self.capacity = capacity
        self.overflow = overflow
        self._max_bytes = max_bytes
        self._size = size
        self._expired = expired
        self._closed_message = closed_message
        self._queue: collections.deque[T] = collections.deque()
        self._waiting = trio.lowlevel.ParkingLot()
        self.closed = False
        self.buffered_bytes = 0
        self._budget: ByteBudget | None = None
        self._delivered = self._dropped = self._refused = self.expired_count = 0

    def limit_bytes(
        self,
        max_bytes: int | None = None,
        *,
        size: Callable[[T], int],
        budget: ByteBudget | None = None,
    ) -> None:
        """Bound the queue in bytes too: at most ``max_bytes`` of its own, and
        with ``budget`` together with the other queues of that budget (items
        already buffered count from now on). ``size`` measures an item. Not a
        checkpoint."""
        if self._budget is not None:
            self._budget._charge(-self.buffered_bytes)
            self._budget._leave(self)
            self._budget = None
        self._max_bytes = max_bytes
        self._size = size
        self.buffered_bytes = sum(size(item) for item in self._queue)
        if budget is not None and not self.closed:
            self._budget = budget
            budget._join(self)
            budget._charge(self.buffered_bytes)

    async def wait_buffered(self) -> None:
        """Wait until an item is buffered or the queue is closed, taking
        nothing (a consumer that must first make room elsewhere). A checkpoint."""
        if self._queue or self.closed:
            await trio.lowlevel.checkpoint()
            return
        while not self._queue and not self.closed:
            await self._waiting.park()

    def __len__(self) -> int:
        return len(self._queue)

    def would_refuse(self, size: int = 0) -> bool:
        """True if one more item (of ``size`` bytes) would not fit."""
        return len(self._queue) >= self.capacity or (
            self._max_bytes is not None and self.buffered_bytes + size > self._max_bytes
        )

    def push(self, item: T) -> bool:
        """Buffer ``item`` (called synchronously by the node). False if it was
        refused (``REFUSE``, full) or, with ``DROP_OLDEST``, if an older item was
        dropped to make room; True otherwise."""
        size = self._size(item) if self._size is not None else 0
        kept = True
        budget = self._budget
        if self.would_refuse(size) or (budget is not None and budget._would_exceed(size)):
            if self.overflow is Overflow.REFUSE:
                self._refused += 1
                return False
            while self._queue and self.would_refuse(size):
                self._drop_oldest()
            if budget is not None:
                budget.make_room(size)
            kept = False
        self._queue.append(item)
        self.buffered_bytes += size
        if budget is not None:
            budget._charge(size)
        self._delivered += 1
        if self._waiting:  # (most pushes find nobody parked)
            self._waiting.unpark()
        return kept

    def _drop_oldest(self) -> None:
        self._discard(self._queue.popleft())
        self._dropped += 1

    def _discard(self, item: T) -> None:
        if self._size is not None:
            size = self._size(item)
            self.buffered_bytes -= size
            if self._budget is not None:
                self._budget._charge(-size)

    def receive_nowait(self) -> T:
        """The next item; raises trio.WouldBlock if there is none, and
        trio.ClosedResourceError once the queue is closed.

        Raises:
            trio.WouldBlock: nothing is buffered.
            trio.ClosedResourceError: the queue is closed.
        """
        if self.closed:
            raise trio.ClosedResourceError(self._closed_message)
        queue = self._queue
        if not queue:
            raise trio.WouldBlock
        while queue:
            item = queue.popleft()
            self._discard(item)
            if self._expired is not None and self._expired(item):
                self.expired_count += 1
                continue
            self._taken(item)
            return item
        self._emptied()  # (expired items went)
        raise trio.WouldBlock

    def _taken(self, item: T) -> None:
        """Hook: ``item`` was handed to the receiver."""

    def _emptied(self) -> None:
        """Hook: a receive emptied the queue of expired items, and found nothing."""

    async def receive(self) -> T:
        """Wait for the next item. A checkpoint.

        Cancellation: loses nothing: an item is taken only by a receive that
        returns it; the next receive gets what a cancelled one did not.

        Raises:
            trio.ClosedResourceError: the queue is closed (at once, or when it
                closes while this waits).
        """
        return await receive_parked(self.receive_nowait, self._waiting)

    def take_all(self) -> list[T]:
        """Remove and return every buffered item (e.g. when closing)."""
        items = list(self._queue)
        self._queue.clear()
        if self._budget is not None:
            self._budget._charge(-self.buffered_bytes)
        self.buffered_bytes = 0
        return items

    def close_nowait(self) -> bool:
        """Close without a checkpoint; True if it was open (receivers wake and
        raise trio.ClosedResourceError)."""
        if self.closed:
            return False
        self.closed = True
        if self._budget is not None:  # what it holds can no longer be received
            self._budget._charge(-self.buffered_bytes)
            self._budget._leave(self)
            self._budget = None
            self._queue.clear()
            self.buffered_bytes = 0
        self._waiting.unpark_all()
        return True

    async def aclose(self) -> None:
        """Close the queue. A checkpoint.

        Cancellation: the queue is closed before the checkpoint: a cancelled
        ``aclose()`` has closed it.
        """
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> QueueStatistics:
        """The queue's counters (see :class:`QueueStatistics`)."""
        return QueueStatistics(
            delivered=self._delivered,
            dropped=self._dropped,
            refused=self._refused,
            expired=self.expired_count,
            buffered=len(self._queue),
            buffered_bytes=self.buffered_bytes,
        )

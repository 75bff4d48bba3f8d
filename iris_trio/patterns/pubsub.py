"""Publish/subscribe and broadcast: events to every member of a tree.

Sending: events published in a burst go out together, one ``TreePublish`` per
tree, once the publisher yields (or a batch is full); the publisher is paced by
the links its events leave on. Receiving: every subscription and broadcast
receiver is a bounded queue (the oldest event goes when it is full, counted).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from ..overlay.ids import name_id
from ..overlay.port import OverlayPort
from ..overlay.tree_frames import MAX_EVENTS
from ..overlay.trees import TreeDelivery
from .limits import check_message
from .membership import CLUSTER, TOPIC, Membership, wait_in_tree
from .queue import ByteBudget
from .subscription import Subscription

__all__ = ["PubSub"]

log = logging.getLogger("iris_trio")

#: publish()/broadcast() calls between two yields to the scheduler.
_YIELD_EVERY: Final = 64
#: How often a publisher waiting for a full link looks again at which links it waits for.
_RECHECK_LINKS: Final = 0.25
#: A batch of events is sent once it holds this many bytes (or MAX_EVENTS events).
_BATCH_BYTES: Final = 64 * 1024
#: The tree id of receivers of every cluster this node is a member of.
_EVERY_CLUSTER: Final = -1


class PubSub:
    """The publish/subscribe and broadcast pattern of one node (see the module
    docstring). :meth:`run_flusher` must run in the node's nursery."""

    def __init__(self, port: OverlayPort, membership: Membership) -> None:
        self._port = port
        self._membership = membership
        # Receivers per tree id: topic subscriptions and broadcast receivers alike.
        self._receivers: dict[int, set[Subscription]] = {}
        self._every_cluster: set[Subscription] = set()  # broadcasts of every cluster
        self._one_cluster: set[Subscription] = set()  # broadcasts of one cluster each
        self._sent = 0
        self._outgoing: dict[int, list[bytes]] = {}
        self._outgoing_bytes: dict[int, int] = {}
        self._outgoing_lot = trio.lowlevel.ParkingLot()
        self.published = self.broadcasts_sent = 0
        self.events_received = self.events_dropped = self.events_missed = 0

    # ----------------------------------------------------------------- sending

    async def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` to every subscriber of ``topic`` (see Node.publish)."""
        await self._send_to_tree(name_id(TOPIC, topic), data)
        self.published += 1

    async def broadcast(self, cluster: str, data: bytes) -> None:
        """Send ``data`` to every member of ``cluster`` (see Node.broadcast)."""
        await self._send_to_tree(name_id(CLUSTER, cluster), data)
        self.broadcasts_sent += 1

    async def _send_to_tree(self, tree: int, data: bytes) -> None:
        check_message(data)
        await trio.lowlevel.checkpoint_if_cancelled()
        port = self._port
        waited = False
        if not port.ready:
            await port.wait_joined()
            waited = True
        paused_until = port.paused_until(tree)
        if paused_until > trio.current_time():  # a branch of the tree falls behind
            self.flush()  # what is batched goes first, then we wait
            await trio.sleep_until(paused_until)
            waited = True
        if tree not in self._outgoing:  # once per batch: where the batch will leave
            while blocked := [
                link
                for link in port.tree_links(tree)
                if link.is_open and not link.has_send_capacity
            ]:
                # Looked at again now and then: a link that stops keeping up is
                # left out (it loses its own events). A link that is going
                # raises here: the overlay reroutes, so go on.
                with (
                    trio.move_on_after(_RECHECK_LINKS),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    await blocked[0].wait_send_capacity()
                await trio.lowlevel.checkpoint()  # (a broken link raises at once)
                waited = True
        self._queue_event(tree, data)
        self._sent += 1
        if not waited and self._sent % _YIELD_EVERY == 0:
            # Not every call yields, so that a burst goes out in few frames and
            # large writes; but other tasks are never starved.
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _queue_event(self, tree: int, data: bytes) -> None:
        batch = self._outgoing.get(tree)
        if batch is not None and (
            len(batch) >= MAX_EVENTS or self._outgoing_bytes[tree] + len(data) > _BATCH_BYTES
        ):
            self._flush_tree(tree)
            batch = None
        if batch is None:
            if not self._outgoing:
                self._outgoing_lot.unpark()  # the flusher runs once we yield
            self._outgoing[tree] = [data]
            self._outgoing_bytes[tree] = len(data)
        else:
            batch.append(data)
            self._outgoing_bytes[tree] += len(data)

    def _flush_tree(self, tree: int) -> None:
        events = self._outgoing.pop(tree)
        del self._outgoing_bytes[tree]
        self._port.publish(tree, events)

    def flush(self) -> None:
        """Send every waiting batch of events (each tree's in one frame)."""
        for tree in list(self._outgoing):
            self._flush_tree(tree)

    async def run_flusher(self) -> None:
        """Send the batches once their publisher yields (run until cancelled)."""
        while True:
            await self._outgoing_lot.park()
            self.flush()

    # --------------------------------------------------------------- receiving

    @asynccontextmanager
    async def subscribe(
        self, topic: str, capacity: int, max_bytes: int, budget: ByteBudget | None = None
    ) -> AsyncIterator[Subscription]:
        """Receive the events of ``topic`` for the body (see Node.subscribe);
        bounded in bytes from the start (``max_bytes``, and ``budget`` with the
        node's other receivers)."""
        tree = name_id(TOPIC, topic)
        subscription = Subscription(topic, capacity, tree=tree, on_close=self._closed)
        subscription.bound_bytes(max_bytes, budget)
        receivers = self._receivers.setdefault(tree, set())
        receivers.add(subscription)
        if len(receivers) == 1:
            log.info("subscribed to topic %r", topic)
            self._port.join_tree(tree)
        try:
            await wait_in_tree(self._port, tree)
            yield subscription
        finally:
            await subscription.aclose()

    @asynccontextmanager
    async def broadcasts(
        self,
        cluster: str | None,
        capacity: int,
        max_bytes: int,
        budget: ByteBudget | None = None,
    ) -> AsyncIterator[Subscription]:
        """Receive broadcasts for the body (see Node.broadcasts), bounded in
        bytes as subscriptions are."""
        if cluster is not None:
            async with self._membership.member(cluster) as tree:
                receiver = Subscription(cluster, capacity, tree=tree, on_close=self._closed)
                receiver.bound_bytes(max_bytes, budget)
                self._one_cluster.add(receiver)
                self._receivers.setdefault(tree, set()).add(receiver)
                try:
                    await wait_in_tree(self._port, tree)
                    yield receiver
                finally:
                    await receiver.aclose()
            return
        receiver = Subscription("", capacity, tree=_EVERY_CLUSTER, on_close=self._closed)
        receiver.bound_bytes(max_bytes, budget)
        self._every_cluster.add(receiver)
        clusters = [name_id(CLUSTER, joined) for joined in self._membership.clusters]
        for tree in clusters:
            self._receivers.setdefault(tree, set()).add(receiver)
        try:
            for tree in clusters:  # receiving once each tree has us
                await wait_in_tree(self._port, tree)
            yield receiver
        finally:
            await receiver.aclose()

    def cluster_joined(self, tree: int) -> None:
        """The node became a member of a cluster: its every-cluster receivers
        get that cluster's broadcasts too."""
        for receiver in self._every_cluster:
            self._receivers.setdefault(tree, set()).add(receiver)

    def cluster_left(self, tree: int) -> None:
        """The node is no longer a member of a cluster."""
        self._receivers.pop(tree, None)

    def _closed(self, subscription: Subscription) -> None:
        if subscription in self._one_cluster:  # the cluster stays joined by member()
            self._one_cluster.discard(subscription)
            self._receivers.get(subscription.tree, set()).discard(subscription)
            return
        if subscription in self._every_cluster:
            self._every_cluster.discard(subscription)
            for tree_receivers in self._receivers.values():
                tree_receivers.discard(subscription)
            return
        receivers = self._receivers.get(subscription.tree)
        if receivers is None:
            return
        receivers.discard(subscription)
        if not receivers:
            log.info("unsubscribed from topic %r", subscription.topic)
            del self._receivers[subscription.tree]
            self._port.leave_tree(subscription.tree)

    def deliver(self, delivery: TreeDelivery) -> None:
        """Events arrived on a tree: to every receiver of that tree."""
        for receiver in self._receivers.get(delivery.tree, ()):
            self.events_received += len(delivery.events)
            if delivery.missed:
                receiver.missed += delivery.missed
                self.events_missed += delivery.missed
            for event in delivery.events:
                if receiver._push(event):
                    self.events_dropped += 1

    @property
    def receivers(self) -> int:
        """Subscriptions and broadcast receivers open now."""
        return len({r for group in self._receivers.values() for r in group} | self._every_cluster)

    def events_buffered(self) -> int:
        """Events waiting in this node's receivers now."""
        receivers = {r for group in self._receivers.values() for r in group}
        receivers |= self._every_cluster
        return sum(len(receiver) for receiver in receivers)

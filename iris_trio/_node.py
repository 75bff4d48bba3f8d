"""``join()`` / ``serve_node()`` / :class:`Node`: the I/O shell root.

A node owns one nursery: the overlay driver (links, timers, discovery, trees)
and the member side of tunnel openings run in it, and leaving the ``async
with`` leaves the overlay gracefully. :class:`Node` offers the four patterns
(publish/subscribe, broadcast, request/reply, tunnels) over the overlay's
trees; their semantics are in docs/patterns.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from ._util import open_unwrapped_nursery
from .crypto.identity import NodeIdentity
from .crypto.keys import DEV_NETWORK, Network, NetworkKey
from .errors import (
    ConfigError,
    InternalError,
    MessageTooLargeError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from .overlay.config import OverlayConfig
from .overlay.discovery import DiscoveryConfig, DiscoveryMode
from .overlay.driver import OverlayDriver, split_address
from .overlay.ids import from_bytes, name_id
from .overlay.tree_frames import MAX_EVENTS, TreeRequest
from .overlay.trees import (
    NO_RESPONDERS,
    OVERLOADED,
    REMOTE_ERROR,
    REPLY,
    RETRY,
    ReplyDelivery,
    RequestDelivery,
    TreeDelivery,
    serves_bit,
)
from .patterns.requests import IncomingRequests, Request, decode_failure, encode_failure
from .patterns.subscription import Subscription
from .patterns.tunnel import DEFAULT_WINDOW, IncomingTunnels, Tunnel, TunnelPath
from .patterns.tunnel_frames import TunnelAllow, TunnelClose, TunnelData, TunnelInit
from .transport.link import Link
from .wire.frames import Frame

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_TIMEOUT",
    "Node",
    "NodeStatistics",
    "join",
    "serve_node",
]

log = logging.getLogger("iris_trio")

#: Largest message of the non-tunnel patterns.
MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
#: A request with neither a cancel-scope deadline nor timeout= gives up after this.
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
#: The longest timeout= a request or tunnel opening takes (one day, in seconds).
MAX_TIMEOUT: Final = 86400.0
#: The longest cluster or topic name, in UTF-8 bytes.
MAX_NAME_LENGTH: Final = 1024
#: The most requests one member handles at once (limit=), and the largest
#: subscription buffer (capacity=), tunnel backlog and window.
_MAX_COUNT: Final = 2**31 - 1
#: Requests a member handles at once unless told otherwise (as Iris: 4 x CPU).
DEFAULT_HANDLER_LIMIT: Final = 4 * (os.cpu_count() or 1)
#: Pause before sending again a request a member gave back unhandled.
_RETRY_PAUSE: Final = 0.02
#: Longest wait for a tree just joined to reach its root (then go on regardless:
#: the tree keeps trying, and a partitioned node must not hang its user).
_LINK_WAIT: Final = 5.0
#: publish()/broadcast() calls between two yields to the scheduler.
_YIELD_EVERY: Final = 64
#: A batch of events is sent once it holds this many bytes (or MAX_EVENTS events).
_BATCH_BYTES: Final = 64 * 1024
CLUSTER, TOPIC = "cluster", "topic"
#: TreeRequest kinds.
_REQUEST, _TUNNEL = 0, 1
#: Tunnels a member queues (opened, not yet received) before refusing more.
DEFAULT_TUNNEL_BACKLOG: Final = 1024
_TUNNEL_FRAMES = (TunnelData, TunnelAllow, TunnelClose, TunnelInit)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatistics:
    """Counters of one node since it started, per pattern.

    Attributes:
        published / broadcasts_sent: publish() and broadcast() calls.
        events_received: events and broadcasts handed to this node's receivers
            (once per receiver).
        events_dropped: of those, dropped from a full receiver buffer (the
            oldest goes); events_buffered: waiting in receivers now.
        requests_sent / requests_answered / requests_failed / requests_pending:
            this node's requests (failed: RemoteError, NoRespondersError or
            timeout; a cancelled request counts as neither answered nor failed).
        requests_received / requests_expired / requests_refused: requests to
            this node's members; expired ones waited past their deadline and were
            dropped unhandled; refused ones found the queue full.
        tunnels_opened / tunnels_accepted / tunnels_open: tunnels this node
            opened, its members took, and open now; tunnel_bytes_sent /
            tunnel_bytes_received: message bytes through them.
        frames_dropped: overlay and tree frames dropped at a full link queue.
        links: links to peers now.
    """

    published: int
    broadcasts_sent: int
    events_received: int
    events_dropped: int
    events_buffered: int
    requests_sent: int
    requests_answered: int
    requests_failed: int
    requests_pending: int
    requests_received: int
    requests_expired: int
    requests_refused: int
    tunnels_opened: int
    tunnels_accepted: int
    tunnels_open: int
    tunnel_bytes_sent: int
    tunnel_bytes_received: int
    frames_dropped: int
    links: int


class Node:
    """A running node (from :func:`join` or :func:`serve_node`)."""

    def __init__(self, driver: OverlayDriver, cluster: str | None) -> None:
        self._driver = driver
        self.cluster = cluster
        # Receivers per tree id: topic subscriptions and broadcast receivers alike.
        self._receivers: dict[int, set[Subscription]] = {}
        self._clusters: collections.Counter[str] = collections.Counter()
        self._sent_to_trees = 0
        # Events published in a burst go out together, one frame per tree: they
        # wait here until the publisher yields (or a batch is full).
        self._outgoing: dict[int, list[bytes]] = {}
        self._outgoing_bytes: dict[int, int] = {}
        self._outgoing_lot = trio.lowlevel.ParkingLot()
        driver.on_leaving = self._flush_outgoing
        self._count: collections.Counter[str] = collections.Counter()
        self._broadcast_receivers: set[Subscription] = set()  # of every cluster joined
        self._member_receivers: set[Subscription] = set()  # of one cluster each
        driver.on_tree_event = self._on_event
        driver.on_request = self._on_request
        driver.on_reply = self._on_reply
        self._pending: dict[bytes, _PendingRequest] = {}
        # Per tree, the local receivers of requests and of tunnels (several, when a
        # relay serves more than one client of a cluster): (queue, limit or window).
        self._incoming: dict[int, list[tuple[IncomingRequests, int]]] = {}
        self._tunnels: dict[bytes, Tunnel] = {}  # by the local end's id
        self._tunnel_inboxes: dict[int, list[tuple[IncomingTunnels, int]]] = {}
        self._local_path = _LocalPath(self)
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._joined = False  # the overlay said it has joined: no more waiting
        driver.on_other_frame = self._on_link_frame
        driver.on_peer_lost = self._on_peer_lost
        if cluster is not None:
            self._clusters[cluster] += 1

    @property
    def id(self) -> bytes:
        """This node's 16-byte id."""
        return self._driver.identity.node_id

    @property
    def address(self) -> str:
        """Where this node accepts links."""
        return self._driver.address

    @property
    def driver(self) -> OverlayDriver:
        """The overlay driver (for diagnostics and the layers above)."""
        return self._driver

    async def wait_joined(self) -> None:
        """Wait until this node has joined the overlay; at once from then on.

        Joined means: the node found its neighbours in the ring (every dial
        towards its seeds and leaf set ended, each leaf told it its state, and
        its leaf set then stayed unchanged for a moment), or it found nobody
        although discovery and its seeds had a fair chance (about 2 s with
        discovery on; at once with ``discovery="off"`` and no seeds). After 10 s
        it counts as joined whatever else holds.

        There is no need to call it before using the node: requests, tunnels,
        publishing and subscribing wait for it themselves, so that a node that
        has just started never says "no responders" for a cluster that has
        members, and a subscription returns only once it receives. A checkpoint.

        Raises:
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        if not self._joined:
            await self._driver.wait_joined()
            self._joined = True
        else:
            await trio.lowlevel.checkpoint()

    @property
    def joined(self) -> bool:
        """True once the node has joined the overlay (see :meth:`wait_joined`)."""
        if not self._joined and self._driver.ready:
            self._joined = True
        return self._joined

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the node has stopped (its join() has exited)")

    async def wait_converged(self, quiet: float = 3.0) -> None:
        """Wait until this node's leaf set has been stable for ``quiet`` seconds."""
        await self._driver.wait_converged(quiet)

    # ------------------------------------------------------------ pub / sub

    async def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` to every subscriber of ``topic`` (none: it goes nowhere).

        Paced by the backpressure of the links the event leaves on: it waits
        while they are congested rather than dropping. A cancellation point; it
        yields to other tasks when it waits and at least every 64 calls.

        A node that has just started first waits until it has joined the
        overlay (see :meth:`wait_joined`), so that its first events reach the
        subscribers already there.

        Raises:
            TypeError: ``data`` is not bytes, or ``topic`` not a str.
            MessageTooLargeError: ``data`` exceeds 8 MiB.
            ConfigError: ``topic`` is empty or longer than MAX_NAME_LENGTH bytes.
            trio.ClosedResourceError: the node has stopped.
        """
        await self._send_to_tree(name_id(TOPIC, check_name("topic", topic)), data)
        self._count["published"] += 1

    async def broadcast(self, cluster: str, data: bytes) -> None:
        """Send ``data`` to every member of ``cluster`` (none: it goes nowhere).

        Best effort, each sender's messages in order, no duplicates. Paced like
        :meth:`publish`. Raises like :meth:`publish`.
        """
        await self._send_to_tree(name_id(CLUSTER, check_name("cluster", cluster)), data)
        self._count["broadcasts_sent"] += 1

    async def _send_to_tree(self, tree: int, data: bytes) -> None:
        check_message(data)
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        if not self._joined:
            await self.wait_joined()
            waited = True
        if tree not in self._outgoing:  # once per batch: where the batch will leave
            for link in self._driver.tree_links(tree):
                if not link.has_send_capacity:
                    # A link that is going raises here: the overlay reroutes, so go on.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await link.wait_send_capacity()
                        waited = True
        self._queue_event(tree, data)
        self._sent_to_trees += 1
        if not waited and self._sent_to_trees % _YIELD_EVERY == 0:
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
        self._driver.publish(tree, events)

    def _flush_outgoing(self) -> None:
        """Send every waiting batch of events (each tree's in one frame)."""
        for tree in list(self._outgoing):
            self._flush_tree(tree)

    async def _run_flusher(self) -> None:
        try:
            while True:
                await self._outgoing_lot.park()
                self._flush_outgoing()
        finally:
            if self._driver.trees is not None:
                self._flush_outgoing()

    @asynccontextmanager
    async def subscribe(self, topic: str, *, capacity: int = 1024) -> AsyncIterator[Subscription]:
        """Receive the events of ``topic`` for the ``async with`` body.

        Returns once the subscription receives: every event published after it
        returned reaches it (a node that has just started first joins the
        overlay, see :meth:`wait_joined`; then the topic's tree takes this node
        in, which is given 5 s at most). Use the subscription as a trio
        receive channel: ``await events.receive()`` or ``async for event in
        events``.

        Args:
            topic: the topic name.
            capacity: events buffered before the oldest is dropped (and counted).

        Raises:
            ConfigError: ``topic`` is empty or too long, or ``capacity`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        check_name("topic", topic)
        check_count("capacity", capacity)
        subscription = Subscription(
            topic, capacity, tree=name_id(TOPIC, topic), on_close=self._unsubscribe
        )
        self._attach(subscription.tree, subscription)
        try:
            await self._wait_linked(subscription.tree)
            yield subscription
        finally:
            await subscription.aclose()

    @asynccontextmanager
    async def join(self, cluster: str) -> AsyncIterator[None]:
        """Be a member of ``cluster`` as well, for the ``async with`` body.

        A member receives the cluster's broadcasts (see :meth:`broadcasts`);
        requests and tunnels only reach members that take them
        (:meth:`requests`, :meth:`serve`, :meth:`tunnels`). Returns once the
        cluster's tree has taken this node in (5 s at most).

        Raises:
            ConfigError: ``cluster`` is empty or too long.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        check_name("cluster", cluster)
        async with self._membership(cluster):
            await self._wait_linked(name_id(CLUSTER, cluster))
            yield

    @asynccontextmanager
    async def _membership(self, cluster: str) -> AsyncIterator[None]:
        """Be a member of ``cluster`` for the body, without waiting for the tree
        (so that a receiver can be in place before the tree hears of us)."""
        self._clusters[cluster] += 1
        if self._clusters[cluster] == 1:
            log.info("joined cluster %r", cluster)
            self._driver.join_tree(name_id(CLUSTER, cluster))
            for receiver in self._broadcast_receivers:
                self._receivers.setdefault(name_id(CLUSTER, cluster), set()).add(receiver)
        try:
            yield
        finally:
            self._clusters[cluster] -= 1
            if not self._clusters[cluster]:
                log.info("left cluster %r", cluster)
                del self._clusters[cluster]
                tree = name_id(CLUSTER, cluster)
                self._receivers.pop(tree, None)
                self._driver.leave_tree(tree)

    @asynccontextmanager
    async def broadcasts(
        self, cluster: str | None = None, *, capacity: int = 1024
    ) -> AsyncIterator[Subscription]:
        """Receive broadcasts for the ``async with`` body.

        Without ``cluster``, those sent to every cluster this node is a member of;
        with it, this node is a member of ``cluster`` for the body as well (as
        :meth:`join`) and receives that cluster's broadcasts only. Returns once
        the broadcasts sent from then on reach the receiver (the node has joined
        the overlay and each cluster's tree has taken it in; 5 s at most each).

        Raises:
            ConfigError: ``cluster`` is empty or too long, or ``capacity`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        check_count("capacity", capacity)
        if cluster is not None:
            check_name("cluster", cluster)
        if cluster is not None:
            async with self.join(cluster):
                tree = name_id(CLUSTER, cluster)
                receiver = Subscription(cluster, capacity, tree=tree, on_close=self._unsubscribe)
                self._member_receivers.add(receiver)
                self._receivers.setdefault(tree, set()).add(receiver)
                try:
                    yield receiver
                finally:
                    await receiver.aclose()
            return
        receiver = Subscription("", capacity, tree=-1, on_close=self._unsubscribe)
        self._broadcast_receivers.add(receiver)
        for joined in self._clusters:
            self._receivers.setdefault(name_id(CLUSTER, joined), set()).add(receiver)
        try:
            for joined in list(self._clusters):  # receiving once each tree has us
                await self._wait_linked(name_id(CLUSTER, joined))
            yield receiver
        finally:
            await receiver.aclose()

    async def _wait_linked(self, tree: int) -> None:
        """Wait until the node has joined the overlay, then (a while at most)
        until a tree just joined reaches its root, so that what is sent from now
        on reaches this node."""
        await self.wait_joined()
        with trio.move_on_after(_LINK_WAIT):
            await self._driver.wait_linked(tree)

    def _attach(self, tree: int, receiver: Subscription) -> None:
        receivers = self._receivers.setdefault(tree, set())
        receivers.add(receiver)
        if len(receivers) == 1:
            log.info("subscribed to topic %r", receiver.topic)
            self._driver.join_tree(tree)

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._member_receivers:  # the cluster stays joined by join()
            self._member_receivers.discard(subscription)
            self._receivers.get(subscription.tree, set()).discard(subscription)
            return
        if subscription in self._broadcast_receivers:
            self._broadcast_receivers.discard(subscription)
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
            self._driver.leave_tree(subscription.tree)

    def _on_event(self, delivery: TreeDelivery) -> None:
        for receiver in self._receivers.get(delivery.tree, ()):
            self._count["events_received"] += len(delivery.events)
            for event in delivery.events:
                if receiver._push(event):
                    self._count["events_dropped"] += 1

    # ----------------------------------------------------------- request / reply

    async def request(self, cluster: str, data: bytes, timeout: float | None = None) -> bytes:
        """Send ``data`` to one member of ``cluster`` and return its reply.

        The deadline is the caller's cancel scope or ``timeout`` (seconds),
        whichever is earlier; with neither, 30 s. The remaining time travels with
        the request, and the member drops it if it expires before it is handled.
        A node that has just started first waits (within the deadline) until it
        has joined the overlay (see :meth:`wait_joined`).

        Raises:
            NoRespondersError: the cluster has no member, or none of its members
                takes requests (at once, once the node has joined).
            RemoteError: the member's handler failed (carries its exception's
                type name and message).
            RequestTimeoutError: ``timeout`` (or the 30 s default) expired (a
                ``trio.TooSlowError`` and a ``TimeoutError``).
            TypeError / MessageTooLargeError: ``data`` is not bytes or too large.
            ConfigError: ``cluster`` is empty or too long, or ``timeout`` is not
                a number of seconds in (0, MAX_TIMEOUT].
            trio.ClosedResourceError: the node has stopped.
        """
        check_message(data)
        self._check_open()
        check_name("cluster", cluster)
        check_timeout(timeout)
        self._count["requests_sent"] += 1
        try:
            pending = await self._call(cluster, data, timeout, _PendingRequest())
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):  # abandoned is not failed
                self._count["requests_failed"] += 1
            raise
        self._count["requests_answered"] += 1
        return pending.data

    async def _call(
        self, cluster: str, data: bytes, timeout: float | None, pending: _PendingRequest
    ) -> _PendingRequest:
        """Send a request (or a tunnel opening) and wait for its answer under the
        deadline rules of :meth:`request`; raise the answer's error, if any."""
        now = trio.current_time()
        scope_deadline = trio.current_effective_deadline()
        own = now + (DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout)
        deadline = min(scope_deadline, own)
        if deadline <= now:
            await trio.lowlevel.checkpoint()  # the caller's scope expired: cancelled here
        if own <= scope_deadline:  # our timeout binds: raise RequestTimeoutError
            with trio.move_on_at(own) as scope:
                await self._exchange(cluster, data, deadline, pending)
            if scope.cancelled_caught:
                raise RequestTimeoutError(f"no answer from cluster {cluster!r} in time")
        else:  # the caller's scope binds: let it cancel us
            await self._exchange(cluster, data, deadline, pending)
        if pending.status == REPLY:
            return pending
        if pending.status == NO_RESPONDERS:
            why = pending.data.decode("utf-8", "replace") if pending.data else "no member"
            raise NoRespondersError(f"cluster {cluster!r}: {why}")
        if pending.status == OVERLOADED:
            message = pending.data.decode("utf-8", "replace")
            raise RemoteError(f"the member was overloaded: {message}")
        type_name, message = decode_failure(pending.data)
        raise RemoteError(message, type_name)

    async def _exchange(
        self, cluster: str, data: bytes, deadline: float, pending: _PendingRequest
    ) -> None:
        """Send until a member takes the request: one that did not handle it (it was
        leaving, or not serving) answers RETRY, and sending again cannot duplicate."""
        if not self._joined:
            await self.wait_joined()
        while True:
            request_id = os.urandom(16)
            pending.done = trio.Event()
            self._pending[request_id] = pending
            try:
                remaining = deadline - trio.current_time()
                milliseconds = min(2**32 - 1, max(1, math.ceil(remaining * 1000)))
                self._driver.request(
                    name_id(CLUSTER, cluster), request_id, milliseconds, data, pending.kind
                )
                await pending.done.wait()
            finally:
                del self._pending[request_id]
            if pending.status != RETRY:
                return
            await trio.sleep(_RETRY_PAUSE)

    def _on_reply(self, delivery: ReplyDelivery) -> None:
        pending = self._pending.get(delivery.reply.request_id)
        if pending is not None and not pending.done.is_set():
            pending.status, pending.data = delivery.reply.status, delivery.reply.data
            pending.done.set()

    @asynccontextmanager
    async def requests(
        self,
        cluster: str | None = None,
        *,
        limit: int | None = None,
    ) -> AsyncIterator[IncomingRequests]:
        """Receive the requests sent to ``cluster`` (default: the node's cluster).

        ``limit`` is the number of requests this member takes at once (default
        4 x CPU); it is the capacity load balancing steers by. Requests whose
        deadline passed while queued are dropped, not handed out. Several
        receivers of one cluster on a node share its requests by spare capacity.
        Returns once requests can reach this member (see :meth:`join`).

        Raises:
            ConfigError: no cluster given (and the node joined none), a bad
                name, or ``limit`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        name = self.cluster if cluster is None else check_name("cluster", cluster)
        if name is None:
            raise ConfigError("requests() needs a cluster (or join() one)")
        tree = name_id(CLUSTER, name)
        limit = DEFAULT_HANDLER_LIMIT if limit is None else check_count("limit", limit)
        async with self._membership(name):
            # In place before the tree hears of this member, so that its first
            # report already says it takes requests.
            incoming = IncomingRequests(lambda: self._report_spare(tree), self._stop_requests)
            self._incoming.setdefault(tree, []).append((incoming, limit))
            self._report_serves(tree)
            try:
                await self._wait_linked(tree)
                yield incoming
            finally:
                await incoming.aclose()

    async def serve(
        self,
        handler: Callable[[bytes], Awaitable[bytes]],
        cluster: str | None = None,
        *,
        limit: int | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer the requests of ``cluster`` with ``handler`` until cancelled.

        One task per request, at most ``limit`` at once (default 4 x CPU); each
        runs under the request's deadline and is cancelled when it passes (the
        requester has stopped waiting; its place is free again). Whatever the
        handler does, the requester gets an answer and the member goes on: an
        exception goes to the requester as RemoteError (its type name and
        message), and so does a result that is not ``bytes``. Started (for
        ``nursery.start``) once requests can reach this member.

        Raises:
            ConfigError / trio.ClosedResourceError: as :meth:`requests`.
        """
        limit = DEFAULT_HANDLER_LIMIT if limit is None else check_count("limit", limit)
        limiter = trio.CapacityLimiter(limit)
        async with self.requests(cluster, limit=limit) as incoming, trio.open_nursery() as tasks:
            task_status.started()
            while True:
                token = object()
                await limiter.acquire_on_behalf_of(token)
                request = await incoming.receive()
                request._started = False
                tasks.start_soon(_handle, handler, request, limiter, token)

    def _report_spare(self, tree: int) -> None:
        entries = self._incoming.get(tree)
        if entries is not None:
            self._driver.set_spare(tree, sum(_spare(entry) for entry in entries))

    def _report_serves(self, tree: int) -> None:
        """Tell the tree which kinds of request this member takes now."""
        serves = 0
        if tree in self._incoming:
            serves |= serves_bit(_REQUEST)
        if tree in self._tunnel_inboxes:
            serves |= serves_bit(_TUNNEL)
        entries = self._incoming.get(tree, ())
        self._driver.set_spare(tree, sum(_spare(entry) for entry in entries), serves)

    def _stop_requests(self, incoming: IncomingRequests) -> None:
        self._count["requests_expired"] += incoming.expired
        for tree, entries in list(self._incoming.items()):
            entries[:] = [entry for entry in entries if entry[0] is not incoming]
            if not entries:
                del self._incoming[tree]
                self._report_serves(tree)
            else:
                self._report_spare(tree)
        queued, taken = incoming.take_every()
        for request in queued:
            self._answer(request, RETRY, b"the member stopped serving")
        for request in taken:
            request._answered = True
            if request._started:  # maybe partly handled: never twice
                self._answer(
                    request, REMOTE_ERROR, encode_failure("the member stopped before answering")
                )
            else:
                self._answer(request, RETRY, b"the member stopped serving")

    def _on_request(self, delivery: RequestDelivery) -> None:
        request = delivery.request
        requester = from_bytes(request.requester)
        if request.kind == _TUNNEL:
            self._on_tunnel_request(delivery.tree, requester, request.request_id, request)
            return
        entries = self._incoming.get(delivery.tree)
        if not entries:
            self._driver.reply(
                requester, request.request_id, RETRY, b"the member is not serving requests"
            )
            return
        incoming = max(entries, key=_spare)[0] if len(entries) > 1 else entries[0][0]
        self._count["requests_received"] += 1
        deadline = trio.current_time() + request.timeout_ms / 1000

        def answer(handled: Request, status: int | None, data: bytes) -> None:
            incoming._answered(handled)
            if status is not None:
                self._answer(handled, status, data)

        arrived = Request(request.data, deadline, request.request_id, requester, answer)
        if not incoming._push(arrived):
            self._count["requests_refused"] += 1
            self._driver.reply(
                requester, request.request_id, OVERLOADED, b"the member's request queue is full"
            )

    def _answer(self, request: Request, status: int, data: bytes) -> None:
        self._driver.reply(request.requester, request.request_id, status, data)

    # ----------------------------------------------------------------- tunnels

    @asynccontextmanager
    async def tunnel(
        self, cluster: str, *, timeout: float | None = None, window: int = DEFAULT_WINDOW
    ) -> AsyncIterator[Tunnel]:
        """Open a tunnel to one member of ``cluster`` for the ``async with`` body.

        Opening follows the deadline rules of :meth:`request` (the member must
        take it within the caller's deadline or ``timeout``); the open tunnel has
        no deadline. ``window`` is the bytes this end buffers for its reader.

        Raises:
            NoRespondersError: the cluster has no member, or none of its members
                takes tunnels (at once, once the node has joined).
            RemoteError: the member could not open the tunnel.
            RequestTimeoutError: no member took it in time.
            ConfigError: a bad cluster name, ``timeout`` or ``window``.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        check_name("cluster", cluster)
        check_timeout(timeout)
        check_count("window", window)
        pending = _PendingRequest(_TUNNEL, window)
        try:
            await self._call(cluster, b"", timeout, pending)
        except BaseException:
            if pending.tunnel is not None:  # taken just as we gave up
                pending.tunnel.abort("the requester gave up")
            raise
        assert pending.tunnel is not None
        async with pending.tunnel as tunnel:
            yield tunnel

    @asynccontextmanager
    async def tunnels(
        self,
        cluster: str | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        backlog: int = DEFAULT_TUNNEL_BACKLOG,
    ) -> AsyncIterator[IncomingTunnels]:
        """Receive the tunnels opened to ``cluster`` (default: the node's cluster).

        Each received :class:`Tunnel` belongs to the receiver: use it in
        ``async with tunnel:``. ``backlog`` tunnels wait to be received before
        further openings are refused; ``window`` is each tunnel's receive buffer.

        Raises:
            ConfigError: no cluster given (and the node joined none), a bad
                name, or ``window`` or ``backlog`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        name = self.cluster if cluster is None else check_name("cluster", cluster)
        if name is None:
            raise ConfigError("tunnels() needs a cluster (or join() one)")
        check_count("window", window)
        check_count("backlog", backlog)
        tree = name_id(CLUSTER, name)
        async with self._membership(name):
            inbox = IncomingTunnels(backlog, self._stop_tunnels)
            self._tunnel_inboxes.setdefault(tree, []).append((inbox, window))
            self._report_serves(tree)
            try:
                await self._wait_linked(tree)
                yield inbox
            finally:
                await inbox.aclose()

    def _stop_tunnels(self, inbox: IncomingTunnels) -> None:
        for tree, entries in list(self._tunnel_inboxes.items()):
            entries[:] = [entry for entry in entries if entry[0] is not inbox]
            if not entries:
                del self._tunnel_inboxes[tree]
                self._report_serves(tree)

    def _on_tunnel_request(
        self, tree: int, requester: int, request_id: bytes, request: TreeRequest
    ) -> None:
        entries = self._tunnel_inboxes.get(tree)
        entry = min(entries, key=lambda e: len(e[0])) if entries else None
        if entry is None or self._nursery is None:
            self._driver.reply(requester, request_id, RETRY, b"the member takes no tunnels")
        elif len(entry[0]) >= entry[0].limit:
            self._driver.reply(requester, request_id, OVERLOADED, b"too many tunnels waiting")
        else:
            address = request.address
            deadline = trio.current_time() + request.timeout_ms / 1000
            self._nursery.start_soon(
                _guarded, self._open_member_end, entry, requester, request_id, address, deadline
            )

    async def _open_member_end(
        self,
        entry: tuple[IncomingTunnels, int],
        requester: int,
        request_id: bytes,
        address: str,
        deadline: float,
    ) -> None:
        inbox, window = entry
        link: Link | None = None
        with trio.move_on_at(deadline):
            try:
                if requester != self._driver.id:
                    link = await self._driver.connect_peer(requester, address)
            except OSError as exc:
                message = f"the member cannot reach the requester: {exc}"
                self._driver.reply(requester, request_id, REMOTE_ERROR, encode_failure(message))
                return
            tunnel = self._new_tunnel(os.urandom(16), request_id, requester, 0, window, link)
            if tunnel._send_control(lambda: TunnelInit(request_id, tunnel.local_id, window)):
                self._count["tunnels_accepted"] += 1
                inbox._push(tunnel)
            else:
                tunnel.abort("the link to the requester broke")

    def _new_tunnel(
        self,
        local_id: bytes,
        remote_id: bytes,
        peer: int,
        allowance: int,
        window: int,
        fallback: Link | None,
    ) -> Tunnel:
        tunnel = Tunnel(
            local_id,
            remote_id,
            peer,
            path=self._path_to(peer, fallback),
            allowance=allowance,
            window=window,
            on_close=self._tunnel_closed,
        )
        self._tunnels[local_id] = tunnel
        self._driver.hold(peer)
        return tunnel

    def _tunnel_closed(self, tunnel: Tunnel) -> None:
        if self._tunnels.pop(tunnel.local_id, None) is not None:
            self._driver.release(tunnel.peer)
            figures = tunnel.statistics()
            self._count["tunnel_bytes_sent"] += figures.bytes_sent
            self._count["tunnel_bytes_received"] += figures.bytes_received

    # -------------------------------------------------------------- statistics

    def statistics(self) -> NodeStatistics:
        """The node's counters, per pattern (see :class:`NodeStatistics`)."""
        count = self._count
        receivers = {r for group in self._receivers.values() for r in group}
        receivers |= self._broadcast_receivers
        tunnels = [t.statistics() for t in self._tunnels.values()]
        driver = self._driver.statistics()
        return NodeStatistics(
            published=count["published"],
            broadcasts_sent=count["broadcasts_sent"],
            events_received=count["events_received"],
            events_dropped=count["events_dropped"],
            events_buffered=sum(r.statistics().buffered for r in receivers),
            requests_sent=count["requests_sent"],
            requests_answered=count["requests_answered"],
            requests_failed=count["requests_failed"],
            requests_pending=sum(1 for p in self._pending.values() if p.kind == _REQUEST),
            requests_received=count["requests_received"],
            requests_expired=count["requests_expired"]
            + sum(incoming.expired for group in self._incoming.values() for incoming, _ in group),
            requests_refused=count["requests_refused"],
            tunnels_opened=count["tunnels_opened"],
            tunnels_accepted=count["tunnels_accepted"],
            tunnels_open=len(self._tunnels),
            tunnel_bytes_sent=count["tunnel_bytes_sent"] + sum(t.bytes_sent for t in tunnels),
            tunnel_bytes_received=count["tunnel_bytes_received"]
            + sum(t.bytes_received for t in tunnels),
            frames_dropped=driver.frames_dropped_full_queue,
            links=driver.links,
        )

    def _path_to(self, peer: int, fallback: Link | None) -> Callable[[], TunnelPath | None]:
        if peer == self._driver.id:
            return lambda: self._local_path

        def path() -> TunnelPath | None:
            link = self._driver.peer_link(peer)
            if link is None and fallback is not None and fallback.is_open:
                return fallback  # the link the tunnel was set up on, not yet adopted
            return link

        return path

    def _on_link_frame(self, link: Link, frame: Frame) -> None:
        if not isinstance(frame, _TUNNEL_FRAMES):
            raise ProtocolError(f"unexpected frame {type(frame).__name__}")
        self._tunnel_frame(from_bytes(link.peer_id), frame, link)

    def _tunnel_frame(self, peer: int, frame: Frame, link: Link | None) -> None:
        if isinstance(frame, TunnelInit):
            self._tunnel_taken(peer, frame, link)
            return
        assert isinstance(frame, (TunnelData, TunnelAllow, TunnelClose))
        tunnel = self._tunnels.get(frame.tunnel)
        if tunnel is None or tunnel.peer != peer:
            return  # closed here meanwhile: what crossed our close is moot
        try:
            tunnel.frame_received(frame)
        except ProtocolError as exc:
            tunnel._break(f"the far end broke the protocol: {exc}")
            raise

    def _tunnel_taken(self, peer: int, frame: TunnelInit, link: Link | None) -> None:
        pending = self._pending.get(frame.tunnel)
        if pending is None or pending.kind != _TUNNEL or pending.done.is_set():
            path = self._path_to(peer, link)()
            if path is not None:  # tell the member at once rather than leave it waiting
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    path.send_control_nowait(
                        TunnelClose(frame.member_tunnel, 0, "the requester gave up")
                    )
            return
        tunnel = self._new_tunnel(
            frame.tunnel, frame.member_tunnel, peer, frame.allowance, pending.window, link
        )
        tunnel._send_control(lambda: TunnelAllow(frame.member_tunnel, pending.window))
        pending.tunnel = tunnel
        pending.status = REPLY
        pending.done.set()
        self._count["tunnels_opened"] += 1

    def _on_peer_lost(self, peer: int) -> None:
        for tunnel in list(self._tunnels.values()):
            if tunnel.peer == peer:
                tunnel._break("the link to the far end broke")


class _PendingRequest:
    """A request (or tunnel opening) waiting for its answer."""

    __slots__ = ("data", "done", "kind", "status", "tunnel", "window")

    def __init__(self, kind: int = _REQUEST, window: int = 0) -> None:
        self.done = trio.Event()
        self.status = REPLY
        self.data = b""
        self.kind = kind
        self.window = window
        self.tunnel: Tunnel | None = None


class _LocalPath:
    """The path of a tunnel whose two ends are on this node: frames are handed
    over directly, with the same flow control as over a link."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def is_open(self) -> bool:
        return True

    @property
    def has_send_capacity(self) -> bool:
        return True

    async def wait_send_capacity(self) -> None:
        await trio.lowlevel.checkpoint()

    def send_nowait(self, frame: Frame) -> None:
        self._node._tunnel_frame(self._node._driver.id, frame, None)

    send_control_nowait = send_nowait


def _spare(entry: tuple[IncomingRequests, int]) -> int:
    incoming, limit = entry
    return limit - incoming.in_flight - len(incoming)


def check_message(data: bytes) -> None:
    """Raise TypeError / MessageTooLargeError unless ``data`` can be sent."""
    if type(data) is not bytes:
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(f"{len(data)} bytes exceed {MAX_MESSAGE_SIZE}")


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it can name a cluster or topic; else raise.

    Raises:
        TypeError: ``name`` is not a str.
        ConfigError: it is empty or longer than MAX_NAME_LENGTH bytes (UTF-8).
    """
    if type(name) is not str:
        raise TypeError(f"a {what} name must be a str, not {type(name).__name__}")
    if not name:
        raise ConfigError(f"a {what} name must not be empty")
    if len(name) > MAX_NAME_LENGTH // 4 and len(name.encode("utf-8", "replace")) > MAX_NAME_LENGTH:
        raise ConfigError(f"a {what} name must be at most {MAX_NAME_LENGTH} bytes (UTF-8)")
    return name


def check_timeout(timeout: float | None) -> None:
    """Raise ConfigError unless ``timeout`` is None or a number of seconds in
    (0, MAX_TIMEOUT]; TypeError if it is not a number."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails this too
        raise ConfigError(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {timeout!r}"
        )


def check_count(what: str, value: int) -> int:
    """Return ``value`` if it is an int from 1 to 2**31 - 1; else raise
    ConfigError (TypeError if it is not an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 1 <= value <= _MAX_COUNT:
        raise ConfigError(f"{what} must be at least 1 (and at most {_MAX_COUNT}), not {value}")
    return value


async def _handle(
    handler: Callable[[bytes], Awaitable[bytes]],
    request: Request,
    limiter: trio.CapacityLimiter,
    token: object,
) -> None:
    """Run ``handler`` on one request and answer it, whatever the handler does."""
    try:
        with trio.move_on_at(request.deadline):  # late work is dropped
            request._started = True
            try:
                result = await handler(request.data)
            except Exception as exc:  # the handler's failure goes to the requester
                request.fail_nowait(str(exc), type(exc).__name__)
            else:
                if type(result) is bytes:
                    request.reply_nowait(result)
                else:
                    message = f"the handler returned {type(result).__name__}, not bytes"
                    request.fail_nowait(message, "TypeError")
    finally:
        if request.expired:  # unanswered, and its requester stopped waiting
            request._drop()  # its place among the member's requests is free again
        # (Else serve() is stopping: it answers what its handlers left.)
        limiter.release_on_behalf_of(token)


async def _guarded(
    function: Callable[..., Awaitable[object]],
    *args: object,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one of the node's own tasks; an unexpected exception from it (a bug:
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


_dev_warned = False


def _network(network: str | Network | None, key: NetworkKey | bytes | None) -> Network:
    if isinstance(network, Network):
        if key is not None:
            raise ConfigError("give the key inside the Network or as key=, not both")
        return network
    if network is None and key is None:
        return DEV_NETWORK
    if network is None or key is None:
        raise ConfigError("a real network needs both network= and key=")
    if isinstance(key, bytes):
        key = NetworkKey.from_bytes(key)
    return Network(network, key)


async def serve_node(
    cluster: str | None = None,
    *,
    network: str | Network | None = None,
    key: NetworkKey | bytes | None = None,
    listen: str | None = None,
    seeds: Sequence[str] = (),
    discovery: DiscoveryMode | DiscoveryConfig | None = None,
    identity: NodeIdentity | None = None,
    config: OverlayConfig | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until cancelled (the composable form of :func:`join`).

    Reports the :class:`Node` through ``task_status``. See :func:`join` for the
    arguments.
    """
    global _dev_warned  # noqa: PLW0603 - once per process
    if cluster is not None:
        check_name("cluster", cluster)
    chosen = _network(network, key)
    dev = chosen is DEV_NETWORK
    settings: DiscoveryConfig | None = None
    mode: DiscoveryMode
    if isinstance(discovery, DiscoveryConfig):
        settings, mode = discovery, discovery.mode
    else:
        mode = discovery or ("loopback" if dev else "lan")
    if mode not in ("loopback", "lan", "off"):
        raise ConfigError(f"discovery must be 'loopback', 'lan' or 'off', not {mode!r}")
    if dev and mode == "lan":
        raise ConfigError(
            "the dev network discovers on loopback only: use discovery='loopback' or 'off', "
            "or a real network (network= and key=) for LAN discovery"
        )
    if dev and not _dev_warned:
        _dev_warned = True
        log.warning("dev network: loopback only; its key is published, not secret")
    host, port = split_address(listen or ("127.0.0.1:0" if dev else "0.0.0.0:0"))
    driver = OverlayDriver(
        identity or NodeIdentity.generate(),
        chosen,
        host=host,
        port=port,
        seeds=list(seeds),
        discovery=settings or DiscoveryConfig(mode=mode),
        config=config,
    )
    node = Node(driver, cluster)
    try:
        async with open_unwrapped_nursery() as nursery:
            node._nursery = nursery
            await nursery.start(_guarded, driver.run)
            nursery.start_soon(_guarded, node._run_flusher)
            if cluster is not None:
                log.info("joined cluster %r", cluster)
                driver.join_tree(name_id(CLUSTER, cluster))
            task_status.started(node)
    finally:
        node._closed = True


@asynccontextmanager
async def join(
    cluster: str | None = None,
    *,
    network: str | Network | None = None,
    key: NetworkKey | bytes | None = None,
    listen: str | None = None,
    seeds: Sequence[str] = (),
    discovery: DiscoveryMode | DiscoveryConfig | None = None,
    identity: NodeIdentity | None = None,
    config: OverlayConfig | None = None,
) -> AsyncIterator[Node]:
    """Join the overlay (as a member of ``cluster``, if given) for the ``async with`` body.

    Args:
        cluster: a cluster to be a member of.
        network / key: a real network (its name and key, or a Network); without
            them, the dev network: loopback only, zero configuration, not secret.
        listen: "host:port" to accept links on (dev: 127.0.0.1:0; else 0.0.0.0:0).
        seeds: addresses to join through, in addition to discovery.
        discovery: "loopback", "lan" or "off" (dev: loopback; else lan), or a
            DiscoveryConfig for ports and intervals of its own.
        identity: the node's key pair (default: a fresh one).
        config: overlay timing and sizing.

    Network failures never escape; the body's own exception leaves unwrapped.
    On exit the node leaves the overlay gracefully.
    """
    async with open_unwrapped_nursery() as nursery:
        node: Node = await nursery.start(
            lambda task_status: serve_node(
                cluster,
                network=network,
                key=key,
                listen=listen,
                seeds=seeds,
                discovery=discovery,
                identity=identity,
                config=config,
                task_status=task_status,
            )
        )
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()

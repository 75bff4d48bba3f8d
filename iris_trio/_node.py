"""``join()`` / ``serve_node()`` / :class:`Node`: the I/O shell root.

A node owns one nursery: the overlay driver (links, timers, discovery, trees)
and the member side of tunnel openings run in it, and leaving the ``async
with`` leaves the overlay gracefully. :class:`Node` offers the four patterns
(publish/subscribe, broadcast, request/reply, tunnels) over the overlay's
trees; their semantics are in docs/patterns.md.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from ._util import guarded, open_unwrapped_nursery
from .errors import ConfigError, ProtocolError
from .overlay.driver import OverlayDriver
from .overlay.trees import AnycastDelivery, BounceDelivery, TreeDelivery
from .patterns.limits import (
    DEFAULT_HANDLER_LIMIT,
    DEFAULT_SUBSCRIPTION_BUDGET,
    DEFAULT_SUBSCRIPTION_BYTES,
    MAX_MESSAGE_SIZE,
    MAX_NAME_LENGTH,
    MAX_TIMEOUT,
    check_count,
    check_message,
    check_name,
    check_size,
    check_timeout,
)
from .patterns.membership import TUNNEL, Membership, wait_in_tree
from .patterns.pubsub import PubSub
from .patterns.queue import ByteBudget
from .patterns.request_frames import RequestDirect, RequestReply
from .patterns.requester import Requester
from .patterns.requests import GO, GONE, IncomingRequests, Responder
from .patterns.subscription import Subscription
from .patterns.tunnel import DEFAULT_WINDOW, IncomingTunnels, Tunnel
from .patterns.tunnels import DEFAULT_TUNNEL_BACKLOG, TUNNEL_FRAMES, Tunnels
from .transport.link import Link
from .wire.frames import Frame


class NodeMonitor(Protocol):
    """What the node knows of its monitor (see :class:`iris_trio.monitor.Monitor`)."""

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` where it serves."""
        ...


class MonitorStarter(Protocol):
    """Starts a node's monitor in the node's nursery (see iris_trio._serve)."""

    async def start(self, node: Node, nursery: trio.Nursery) -> NodeMonitor:
        """Start the monitor of ``node`` as a task of ``nursery``."""
        ...

    def abandon(self) -> None:
        """The node failed before its monitor started: free what it holds."""
        ...


__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_TIMEOUT",
    "MonitorStarter",
    "Node",
    "NodeMonitor",
    "NodeStatistics",
    "PeerInfo",
    "check_message",
    "check_name",
]

log = logging.getLogger("iris_trio")


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatistics:
    """Counters of one node since it started, per pattern.

    Attributes:
        published / broadcasts_sent: publish() and broadcast() calls.
        events_received: events and broadcasts handed to this node's receivers
            (once per receiver).
        events_dropped: of those, dropped from a full receiver buffer (the
            oldest goes); events_buffered: waiting in receivers now;
            events_missed: events published that never reached a receiver of
            this node while it was open (lost on the way, told by gaps in the
            publishers' sequence numbers; once per receiver).
        requests_sent / requests_answered / requests_failed / requests_pending:
            this node's requests (failed: RemoteError, NoRespondersError or
            timeout; a cancelled request counts as neither answered nor failed).
        requests_direct: of the requests sent, those sent straight to a
            member this node has a link to and heard from a moment ago (the
            others went through the cluster's tree).
        requests_received / requests_replied / requests_expired /
            requests_refused: requests to this node's members: handed to them,
            answered with a reply (not an error), dropped unhandled past their
            deadline, and refused with a full queue.
        tunnels_opened / tunnels_accepted / tunnels_open: tunnels this node
            opened, its members took, and open now; tunnel_bytes_sent /
            tunnel_bytes_received: message bytes through them.
        frames_dropped: overlay and tree frames dropped at a full link queue.
        links: links to peers now.
        node_id: this node's id (32 hex digits); joined: it has joined the
            overlay (see Node.wait_joined).
        peers: overlay peers now; leaves_right / leaves_left: the leaf set's
            ids (hex), nearest first, clockwise and counter-clockwise;
            table_entries: routing-table entries; peers_declared_dead: peers
            dropped because they fell silent.
    """

    published: int
    broadcasts_sent: int
    events_received: int
    events_dropped: int
    events_buffered: int
    events_missed: int
    requests_sent: int
    requests_answered: int
    requests_failed: int
    requests_pending: int
    requests_direct: int
    requests_received: int
    requests_replied: int
    requests_expired: int
    requests_refused: int
    tunnels_opened: int
    tunnels_accepted: int
    tunnels_open: int
    tunnel_bytes_sent: int
    tunnel_bytes_received: int
    frames_dropped: int
    links: int
    node_id: str
    joined: bool
    peers: int
    leaves_right: tuple[str, ...]
    leaves_left: tuple[str, ...]
    table_entries: int
    peers_declared_dead: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeerInfo:
    """One overlay peer this node has a link to now (see :meth:`Node.peers`).

    Attributes:
        id: its node id (32 hex digits).
        address: where it accepts links.
        leaf: it is in this node's leaf set; in_table: in its routing table.
        link_age: seconds since the link came up.
        rtt: the smoothed round-trip time of an overlay hop to it and its
            acknowledgement, in seconds; None until one was measured.
        queued_bytes / queued_frames: waiting on the link to it now;
        bytes_sent / bytes_received: moved over that link. None, all four,
            in the moment the overlay knows the peer but the link is not in use.
    """

    id: str
    address: str
    leaf: bool
    in_table: bool
    link_age: float
    rtt: float | None
    queued_bytes: int | None
    queued_frames: int | None
    bytes_sent: int | None
    bytes_received: int | None


class Node:
    """A running node (from :func:`join` or :func:`serve_node`).

    A thin composition: the overlay (its driver) below, one object per pattern
    above it (:mod:`iris_trio.patterns`), each public method checking its inputs
    and delegating. The node is the overlay's upcall object: it hands what
    arrives to the pattern it belongs to.
    """

    def __init__(
        self,
        build_driver: Callable[..., OverlayDriver],
        cluster: str | None,
        *,
        subscription_bytes: int = DEFAULT_SUBSCRIPTION_BUDGET,
    ) -> None:
        driver = self._driver = build_driver(upcalls=self)
        self.cluster = cluster
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._started_at = trio.current_time()
        self._topics: collections.Counter[str] = collections.Counter()
        self._monitor: NodeMonitor | None = None
        self._joined = False  # the overlay said it has joined: no more waiting
        self._malformed = 0  # routed pattern messages no pattern could take
        self._membership = Membership(driver, self._cluster_joined, self._cluster_left)
        self._pubsub = PubSub(driver, self._membership)
        #: The bytes buffered by all embedded subscriptions and broadcast receivers.
        self._subscription_budget = ByteBudget(subscription_bytes)
        self._requester = Requester(driver)
        self._responder = Responder(driver, self._membership)
        # Requests of this node's own to its own members skip the overlay.
        self._requester.local_room = self._responder.local_room
        self._requester.local_request = self._responder.local_request
        self._responder.local_answer = functools.partial(self._requester.reply_received, local=True)
        self._tunnels = Tunnels(driver, self._requester, self._membership, self._spawn)

    async def _run(
        self, task_status: trio.TaskStatus[Node], monitor: MonitorStarter | None = None
    ) -> None:
        """Run the node's tasks until cancelled (see :func:`iris_trio.serve_node`);
        with ``monitor``, its monitor too, as one more child task."""
        started = False
        try:
            async with open_unwrapped_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(guarded, self._driver.run)
                if self.cluster is not None:
                    self._membership.enter(self.cluster)
                nursery.start_soon(guarded, self._pubsub.run_flusher)
                nursery.start_soon(guarded, self._responder.run_notices, self._spawn)
                nursery.start_soon(guarded, self._responder.run_reports)
                nursery.start_soon(guarded, self._requester.run_timeouts)
                if monitor is not None:
                    started = True  # from here it owns what it bound
                    self._monitor = await monitor.start(self, nursery)
                task_status.started(self)
        finally:
            self._closed = True
            if monitor is not None and not started:  # the node failed first
                monitor.abandon()

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

    @property
    def closed(self) -> bool:
        """True once the node has stopped (its ``join()`` has exited)."""
        return self._closed

    @property
    def started_at(self) -> float:
        """When the node started, in ``trio.current_time()`` seconds."""
        return self._started_at

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics this node subscribes to now (sorted)."""
        return tuple(sorted(self._topics))

    @property
    def clusters(self) -> tuple[str, ...]:
        """The clusters this node is a member of now (sorted)."""
        return tuple(sorted(self._membership.clusters))

    @property
    def monitor(self) -> NodeMonitor | None:
        """The node's monitor, when started with ``monitor=`` (else None). Set
        its ``relay`` to show a relay's figures as well."""
        return self._monitor

    @property
    def monitor_url(self) -> str | None:
        """``http://HOST:PORT`` of the node's monitor (the port chosen for port
        0), or None without one."""
        return None if self._monitor is None else self._monitor.url

    @property
    def subscription_budget(self) -> ByteBudget:
        """The bytes all subscriptions and broadcast receivers of this node
        buffer together (``used`` now, at most ``max_bytes``: the node's
        ``subscription_bytes=``); beyond, the one holding the most drops its
        oldest event (counted there). A relay client's subscriptions count
        against the relay's limits instead."""
        return self._subscription_budget

    def peers(self) -> list[PeerInfo]:
        """The overlay peers this node has a link to now, by id."""
        driver = self._driver
        overlay = driver.overlay
        if overlay is None:
            return []
        now = trio.current_time()
        leaves = {*overlay.leaves.right, *overlay.leaves.left}
        table = set(overlay.table)
        shown = []
        for peer, address in sorted(overlay.peers.items()):
            link = driver.peer_link(peer)
            figures = link.statistics() if link is not None else None
            shown.append(
                PeerInfo(
                    id=f"{peer:032x}",
                    address=address,
                    leaf=peer in leaves,
                    in_table=peer in table,
                    link_age=now - overlay.connected_since(peer),
                    rtt=overlay.peer_rtt(peer),
                    queued_bytes=figures.queued_bytes if figures else None,
                    queued_frames=figures.queued_frames if figures else None,
                    bytes_sent=figures.bytes_sent if figures else None,
                    bytes_received=figures.bytes_received if figures else None,
                )
            )
        return shown

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

        Cancellation: stops the wait only; the node goes on joining.

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

        Cancellation: a cancelled ``publish()`` has sent nothing (the event is
        queued to go only as the call returns); nothing is left behind.

        Raises:
            TypeError: ``data`` is not bytes, or ``topic`` not a str.
            MessageTooLargeError: ``data`` exceeds 8 MiB.
            ConfigError: ``topic`` is empty or longer than MAX_NAME_LENGTH bytes.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        await self._pubsub.publish(check_name("topic", topic), data)

    async def broadcast(self, cluster: str, data: bytes) -> None:
        """Send ``data`` to every member of ``cluster`` (none: it goes nowhere).

        Best effort, each sender's messages in order, no duplicates. Paced like
        :meth:`publish`. Raises like :meth:`publish`.

        Cancellation: as :meth:`publish`: a cancelled ``broadcast()`` has sent
        nothing.
        """
        self._check_open()
        await self._pubsub.broadcast(check_name("cluster", cluster), data)

    @asynccontextmanager
    async def subscribe(
        self,
        topic: str,
        *,
        capacity: int = 1024,
        max_bytes: int = DEFAULT_SUBSCRIPTION_BYTES,
    ) -> AsyncIterator[Subscription]:
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
            max_bytes: bytes of events buffered before the oldest is dropped
                (and counted); default 16 MiB. One event is kept whatever its
                size. All subscriptions of the node together buffer at most its
                ``subscription_bytes=`` (default 256 MiB; see
                :attr:`subscription_budget`).

        Cancellation: cancelled while it waits for the topic's tree, or the body
        left by cancellation (or any exception): the subscription closes, and
        the node leaves the topic's tree once no other subscription of it
        remains; nothing is left behind (events still buffered are discarded).

        Raises:
            ConfigError: ``topic`` is empty or too long, or ``capacity`` or
                ``max_bytes`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        check_name("topic", topic)
        check_count("capacity", capacity)
        check_size("max_bytes", max_bytes)
        self._topics[topic] += 1
        try:
            budget = self._subscription_budget
            async with self._pubsub.subscribe(topic, capacity, max_bytes, budget) as subscription:
                yield subscription
        finally:
            self._topics[topic] -= 1
            if not self._topics[topic]:
                del self._topics[topic]

    @asynccontextmanager
    async def join(self, cluster: str) -> AsyncIterator[None]:
        """Be a member of ``cluster`` as well, for the ``async with`` body.

        A member receives the cluster's broadcasts (see :meth:`broadcasts`);
        requests and tunnels only reach members that take them
        (:meth:`requests`, :meth:`serve`, :meth:`tunnels`). Returns once the
        cluster's tree has taken this node in (5 s at most). Example::

            async with node.join("workers"), node.broadcasts() as heard:
                async for message in heard:
                    ...

        Cancellation: cancelled while it waits for the tree, or the body left
        by cancellation (or any exception): this node stops being a member
        (unless it is one otherwise: the cluster of its ``join()``, or another
        ``node.join()`` of it) and leaves the tree; nothing is left behind.

        Raises:
            ConfigError: ``cluster`` is empty or too long.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        check_name("cluster", cluster)
        async with self._membership.member(cluster) as tree:
            await wait_in_tree(self._driver, tree)
            yield

    @asynccontextmanager
    async def broadcasts(
        self,
        cluster: str | None = None,
        *,
        capacity: int = 1024,
        max_bytes: int = DEFAULT_SUBSCRIPTION_BYTES,
    ) -> AsyncIterator[Subscription]:
        """Receive broadcasts for the ``async with`` body.

        Without ``cluster``, those sent to every cluster this node is a member of;
        with it, this node is a member of ``cluster`` for the body as well (as
        :meth:`join`) and receives that cluster's broadcasts only. Returns once
        the broadcasts sent from then on reach the receiver (the node has joined
        the overlay and each cluster's tree has taken it in; 5 s at most each).
        ``capacity`` and ``max_bytes`` bound the receiver's buffer as
        :meth:`subscribe`'s (the oldest broadcast goes, counted), and it counts
        against the node's :attr:`subscription_budget` too.

        Cancellation: as :meth:`subscribe`: cancelled while it waits, or the
        body left by cancellation, the receiver closes (and, with ``cluster``,
        the membership it took ends as :meth:`join`'s); nothing is left behind.

        Raises:
            ConfigError: ``cluster`` is empty or too long, or ``capacity`` or
                ``max_bytes`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_open()
        check_count("capacity", capacity)
        check_size("max_bytes", max_bytes)
        if cluster is not None:
            check_name("cluster", cluster)
        budget = self._subscription_budget
        async with self._pubsub.broadcasts(cluster, capacity, max_bytes, budget) as receiver:
            yield receiver

    # ----------------------------------------------------------- request / reply

    async def request(self, cluster: str, data: bytes, timeout: float | None = None) -> bytes:
        """Send ``data`` to one member of ``cluster`` and return its reply.

        The deadline is the caller's cancel scope or ``timeout`` (seconds),
        whichever is earlier; with neither, 30 s. The remaining time travels with
        the request, and the member drops it if it expires before it is handled.
        A node that has just started first waits (within the deadline) until it
        has joined the overlay (see :meth:`wait_joined`).

        Cancellation: stops the wait, not the request: a member may still run
        it (requests run at most once, never twice), and its reply is dropped
        when it comes. The request counts as neither answered nor failed in
        :meth:`statistics`. Example::

            reply = await node.request("calc", b"2 3 4", timeout=5)

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
        return await self._requester.request(cluster, data, timeout)

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
        Example (answer each :class:`Request` once)::

            async with node.requests("calc", limit=8) as incoming:
                async for request in incoming:
                    await request.reply(await add(request.data))

        Cancellation: leaving the body, by cancellation or otherwise, closes the
        receiver (:meth:`IncomingRequests.aclose`): requests still queued go
        to another member, those received and never answered fail with
        :class:`RemoteError` (they may have partly run, so they are not sent
        again). Cancelled before the body, it leaves nothing behind.

        Raises:
            ConfigError: no cluster given (and the node joined none), a bad
                name, or ``limit`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        name, limit = self._member_arguments("requests", cluster, limit)
        async with self._responder.requests(name, limit) as incoming:
            yield incoming

    async def serve(
        self,
        handler: Callable[[bytes], Awaitable[bytes]],
        cluster: str | None = None,
        *,
        limit: int | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer the requests of ``cluster`` with ``handler`` until cancelled.

        A pool of at most ``limit`` worker tasks (default 4 x CPU) runs the
        handler, one request at a time each (a handler that does not wait
        answers a whole batch of requests in one scheduler turn); each call
        runs under the request's deadline and is cancelled when it passes (the
        requester has stopped waiting; its place is free again). Whatever the
        handler does, the requester gets an answer and the member goes on: an
        exception goes to the requester as RemoteError (its type name and
        message), and so does a result that is not ``bytes``. Started (for
        ``nursery.start``) once requests can reach this member. Example::

            async def add(data: bytes) -> bytes:
                return str(sum(map(int, data.split()))).encode()

            async with trio.open_nursery() as nursery:
                await nursery.start(node.serve, add, "calc")

        Cancellation: stops serving and returns once every handler has ended.
        Running handlers are cancelled, and their requesters get
        :class:`RemoteError` (a request may have partly run, so it is not sent
        again); requests queued here, or handed to a handler that had not begun
        yet, go to another member. The node stays a member of ``cluster`` only
        if it is one otherwise.

        Raises:
            ConfigError / trio.ClosedResourceError: as :meth:`requests`.
        """
        name, limit = self._member_arguments("serve", cluster, limit)
        await self._responder.serve(handler, name, limit, task_status)

    def _member_arguments(
        self, what: str, cluster: str | None, limit: int | None
    ) -> tuple[str, int]:
        self._check_open()
        name = self.cluster if cluster is None else check_name("cluster", cluster)
        if name is None:
            raise ConfigError(f"{what}() needs a cluster (or join() one)")
        return name, DEFAULT_HANDLER_LIMIT if limit is None else check_count("limit", limit)

    # ----------------------------------------------------------------- tunnels

    @asynccontextmanager
    async def tunnel(
        self, cluster: str, *, timeout: float | None = None, window: int = DEFAULT_WINDOW
    ) -> AsyncIterator[Tunnel]:
        """Open a tunnel to one member of ``cluster`` for the ``async with`` body.

        Opening follows the deadline rules of :meth:`request` (the member must
        take it within the caller's deadline or ``timeout``); the open tunnel has
        no deadline. ``window`` is the bytes this end buffers for its reader.
        Example (the full program in :doc:`/tutorial/4-tunnel`)::

            async with node.tunnel("files", timeout=5) as tunnel:
                await tunnel.send(b"GET report.csv")
                async for chunk in tunnel:
                    output.write(chunk)

        Cancellation: cancelled while opening, the opening is abandoned (a
        member that took it just then sees the tunnel aborted). The body left
        by cancellation (or any exception) closes the tunnel abnormally: the
        far end gets ``trio.BrokenResourceError``, not an end of channel.

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
        async with self._tunnels.tunnel(cluster, timeout, window) as tunnel:
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
        Example::

            async with node.tunnels("files") as incoming, trio.open_nursery() as nursery:
                async for tunnel in incoming:
                    nursery.start_soon(send_file, tunnel)  # uses `async with tunnel:`

        Cancellation: leaving the body, by cancellation or otherwise, stops
        taking tunnels: those not yet received are closed abnormally (their
        openers get ``trio.BrokenResourceError``); those received belong to
        their receivers, each closed by its own ``async with``.

        Raises:
            ConfigError: no cluster given (and the node joined none), a bad
                name, or ``window`` or ``backlog`` < 1.
            trio.ClosedResourceError: the node has stopped.
        """
        name, _ = self._member_arguments("tunnels", cluster, None)
        check_count("window", window)
        check_count("backlog", backlog)
        async with self._tunnels.tunnels(name, window, backlog) as inbox:
            yield inbox

    # -------------------------------------------------------------- statistics

    def statistics(self) -> NodeStatistics:
        """The node's counters, per pattern (see :class:`NodeStatistics`)."""
        pubsub, requester, responder, tunnels = (
            self._pubsub,
            self._requester,
            self._responder,
            self._tunnels,
        )
        bytes_sent, bytes_received = tunnels.bytes_moved()
        driver = self._driver.statistics()
        return NodeStatistics(
            published=pubsub.published,
            broadcasts_sent=pubsub.broadcasts_sent,
            events_received=pubsub.events_received,
            events_dropped=pubsub.events_dropped,
            events_buffered=pubsub.events_buffered(),
            events_missed=pubsub.events_missed,
            requests_sent=requester.sent,
            requests_answered=requester.answered,
            requests_failed=requester.failed,
            requests_pending=requester.pending_requests,
            requests_direct=requester.direct,
            requests_received=responder.received,
            requests_replied=responder.replied,
            requests_expired=responder.expired,
            requests_refused=responder.refused,
            tunnels_opened=tunnels.opened,
            tunnels_accepted=tunnels.accepted,
            tunnels_open=tunnels.open,
            tunnel_bytes_sent=bytes_sent,
            tunnel_bytes_received=bytes_received,
            frames_dropped=driver.frames_dropped_full_queue,
            links=driver.links,
            node_id=f"{self._driver.id:032x}",
            joined=self.joined,
            peers=driver.peers,
            leaves_right=tuple(f"{node:032x}" for node in driver.leaves_right),
            leaves_left=tuple(f"{node:032x}" for node in driver.leaves_left),
            table_entries=driver.table_entries,
            peers_declared_dead=driver.peers_declared_dead,
        )

    # --------------------------------------------- upcalls (what the overlay hands up)

    def events_received(self, delivery: TreeDelivery) -> None:
        """Events published on a tree this node is a member of."""
        self._pubsub.deliver(delivery)

    def anycast_received(self, delivery: AnycastDelivery) -> None:
        """A request or a tunnel opening for this node's members."""
        try:
            if delivery.kind == TUNNEL:
                self._tunnels.request_received(delivery)
            else:
                self._responder.request_received(delivery)
        except ProtocolError as exc:  # it travelled the overlay: drop it, not a link
            self._malformed += 1
            log.warning("dropped a malformed request: %s", exc)

    def bounce_received(self, delivery: BounceDelivery) -> None:
        """A request or tunnel opening of this node's came back unanswered."""
        self._requester.bounce_received(delivery)

    def frame_received(self, link: Link | None, frame: Frame) -> None:
        """A frame of the patterns' own arrived, on ``link`` or routed (None).

        Raises:
            ProtocolError: a frame no pattern takes arrived on a link (the link
                goes; one that came routed is dropped and counted).
        """
        if isinstance(frame, RequestReply):
            holder = None if link is None else link.peer_node
            heard_at = None if link is None else link.last_read
            if frame.status in (GO, GONE):  # a requester answers our member's claim
                self._responder.claim_answered(frame)
            else:
                self._requester.reply_received(frame, holder, heard_at)
        elif isinstance(frame, RequestDirect) and link is not None:
            self._responder.direct_received(link.peer_node, frame, link.last_read)
        elif isinstance(frame, TUNNEL_FRAMES) and link is not None:
            self._tunnels.frame_received(link, frame)
        elif link is not None:
            raise ProtocolError(f"unexpected frame {type(frame).__name__}")
        else:
            self._malformed += 1

    def peer_lost(self, node: int) -> None:
        """The last link to ``node`` is gone: its tunnels break, and requests it
        held fail at once."""
        self._tunnels.peer_lost(node)
        self._requester.peer_lost(node)
        self._responder.peer_lost(node)

    def leaving(self) -> None:
        """The node starts to leave: what is still batched goes out now."""
        self._pubsub.flush()

    def _cluster_joined(self, tree: int) -> None:
        self._pubsub.cluster_joined(tree)

    def _cluster_left(self, tree: int) -> None:
        self._pubsub.cluster_left(tree)

    def _spawn(self, function: Callable[..., Awaitable[object]], *args: object) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(guarded, function, *args)

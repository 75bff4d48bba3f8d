"""``join()`` / ``serve_node()`` / :class:`Node`: the I/O shell root.

A node owns one nursery: the overlay driver (links, timers, discovery, trees)
runs in it, and leaving the ``async with`` leaves the overlay gracefully.
This module currently offers publish/subscribe and cluster membership; the
other patterns (request/reply, broadcast, tunnels) build on the same trees.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final

import trio

from ._util import open_unwrapped_nursery
from .crypto.identity import NodeIdentity
from .crypto.keys import DEV_NETWORK, Network, NetworkKey
from .errors import ConfigError, MessageTooLargeError, NoRespondersError, RemoteError
from .overlay.config import OverlayConfig
from .overlay.discovery import DiscoveryConfig, DiscoveryMode
from .overlay.driver import OverlayDriver
from .overlay.ids import from_bytes, name_id
from .overlay.trees import (
    NO_RESPONDERS,
    OVERLOADED,
    REPLY,
    RETRY,
    ReplyDelivery,
    RequestDelivery,
    TreeDelivery,
)
from .patterns.requests import IncomingRequests, Request
from .patterns.subscription import Subscription

__all__ = ["MAX_MESSAGE_SIZE", "Node", "join", "serve_node"]

log = logging.getLogger("iris_trio")

#: Largest message of the non-tunnel patterns.
MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
#: A request with neither a cancel-scope deadline nor timeout= gives up after this.
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
#: Requests a member handles at once unless told otherwise (as Iris: 4 x CPU).
DEFAULT_HANDLER_LIMIT: Final = 4 * (os.cpu_count() or 1)
#: Pause before sending again a request a member gave back unhandled.
_RETRY_PAUSE: Final = 0.02
#: Bytes of requests a member queues before refusing more (as Iris).
MAX_QUEUED_BYTES: Final = 64 * 1024 * 1024
CLUSTER, TOPIC = "cluster", "topic"


class Node:
    """A running node (from :func:`join` or :func:`serve_node`)."""

    def __init__(self, driver: OverlayDriver, cluster: str | None) -> None:
        self._driver = driver
        self.cluster = cluster
        # Receivers per tree id: topic subscriptions and broadcast receivers alike.
        self._receivers: dict[int, set[Subscription]] = {}
        self._clusters: collections.Counter[str] = collections.Counter()
        self._broadcast_receivers: set[Subscription] = set()
        driver.on_tree_event = self._on_event
        driver.on_request = self._on_request
        driver.on_reply = self._on_reply
        self._pending: dict[bytes, _PendingRequest] = {}
        self._incoming: dict[int, tuple[IncomingRequests, int]] = {}  # tree -> (queue, limit)
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
        """Wait until this node is part of a ring."""
        await self._driver.wait_joined()

    async def wait_converged(self, quiet: float = 3.0) -> None:
        """Wait until this node's leaf set has been stable for ``quiet`` seconds."""
        await self._driver.wait_converged(quiet)

    # ------------------------------------------------------------ pub / sub

    async def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` to every subscriber of ``topic`` (none: it goes nowhere).

        Paced by the backpressure of the first link on the way. A checkpoint.

        Raises:
            TypeError: ``data`` is not bytes.
            MessageTooLargeError: ``data`` exceeds 8 MiB.
        """
        await self._send_to_tree(name_id(TOPIC, topic), data)

    async def broadcast(self, cluster: str, data: bytes) -> None:
        """Send ``data`` to every member of ``cluster`` (none: it goes nowhere).

        Best effort, each sender's messages in order, no duplicates. Paced like
        :meth:`publish`. Raises like :meth:`publish`.
        """
        await self._send_to_tree(name_id(CLUSTER, cluster), data)

    async def _send_to_tree(self, tree: int, data: bytes) -> None:
        _check_message(data)
        link = self._driver.next_hop_link(tree)
        if link is not None:
            # A link that is going raises here: the overlay reroutes, so go on.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await link.wait_send_capacity()
        else:
            await trio.lowlevel.checkpoint()
        self._driver.publish(tree, data)

    @asynccontextmanager
    async def subscribe(self, topic: str, *, capacity: int = 1024) -> AsyncIterator[Subscription]:
        """Receive the events of ``topic`` for the ``async with`` body.

        Args:
            topic: the topic name.
            capacity: events buffered before the oldest is dropped (and counted).
        """
        if capacity < 1:
            raise ConfigError("capacity must be at least 1")
        subscription = Subscription(
            topic, capacity, tree=name_id(TOPIC, topic), on_close=self._unsubscribe
        )
        self._attach(subscription.tree, subscription)
        try:
            yield subscription
        finally:
            await subscription.aclose()

    @asynccontextmanager
    async def join(self, cluster: str) -> AsyncIterator[None]:
        """Be a member of ``cluster`` as well, for the ``async with`` body."""
        self._clusters[cluster] += 1
        if self._clusters[cluster] == 1:
            self._driver.join_tree(name_id(CLUSTER, cluster))
            for receiver in self._broadcast_receivers:
                self._receivers.setdefault(name_id(CLUSTER, cluster), set()).add(receiver)
        try:
            yield
        finally:
            self._clusters[cluster] -= 1
            if not self._clusters[cluster]:
                del self._clusters[cluster]
                tree = name_id(CLUSTER, cluster)
                self._receivers.pop(tree, None)
                self._driver.leave_tree(tree)

    @asynccontextmanager
    async def broadcasts(self, *, capacity: int = 1024) -> AsyncIterator[Subscription]:
        """Receive the broadcasts sent to the clusters this node is a member of."""
        if capacity < 1:
            raise ConfigError("capacity must be at least 1")
        receiver = Subscription("", capacity, tree=-1, on_close=self._unsubscribe)
        self._broadcast_receivers.add(receiver)
        for cluster in self._clusters:
            self._receivers.setdefault(name_id(CLUSTER, cluster), set()).add(receiver)
        try:
            yield receiver
        finally:
            await receiver.aclose()

    def _attach(self, tree: int, receiver: Subscription) -> None:
        receivers = self._receivers.setdefault(tree, set())
        receivers.add(receiver)
        if len(receivers) == 1:
            self._driver.join_tree(tree)

    def _unsubscribe(self, subscription: Subscription) -> None:
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
            del self._receivers[subscription.tree]
            self._driver.leave_tree(subscription.tree)

    def _on_event(self, event: TreeDelivery) -> None:
        for receiver in self._receivers.get(event.tree, ()):
            receiver._push(event.data)

    # ----------------------------------------------------------- request / reply

    async def request(self, cluster: str, data: bytes, timeout: float | None = None) -> bytes:
        """Send ``data`` to one member of ``cluster`` and return its reply.

        The deadline is the caller's cancel scope or ``timeout`` (seconds),
        whichever is earlier; with neither, 30 s. The remaining time travels with
        the request, and the member drops it if it expires before it is handled.

        Raises:
            NoRespondersError: the cluster has no member (at once).
            RemoteError: the member's handler failed (carries its message).
            trio.TooSlowError: ``timeout`` (or the 30 s default) expired.
            TypeError / MessageTooLargeError: ``data`` is not bytes or too large.
        """
        _check_message(data)
        now = trio.current_time()
        scope_deadline = trio.current_effective_deadline()
        own = now + (DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout)
        deadline = min(scope_deadline, own)
        if deadline <= now:
            raise trio.TooSlowError
        if own <= scope_deadline:  # our timeout binds: raise TooSlowError
            with trio.fail_at(own):
                pending = await self._exchange(cluster, data, deadline)
        else:  # the caller's scope binds: let it cancel us
            pending = await self._exchange(cluster, data, deadline)
        if pending.status == REPLY:
            return pending.data
        if pending.status == NO_RESPONDERS:
            raise NoRespondersError(f"cluster {cluster!r} has no member")
        message = pending.data.decode("utf-8", "replace")
        if pending.status == OVERLOADED:
            raise RemoteError(f"the member was overloaded: {message}")
        raise RemoteError(message)

    async def _exchange(self, cluster: str, data: bytes, deadline: float) -> _PendingRequest:
        """Send until a member takes the request: one that did not handle it (it was
        leaving, or not serving) answers RETRY, and sending again cannot duplicate."""
        while True:
            request_id = os.urandom(16)
            pending = _PendingRequest()
            self._pending[request_id] = pending
            try:
                remaining = deadline - trio.current_time()
                milliseconds = min(2**32 - 1, max(1, math.ceil(remaining * 1000)))
                self._driver.request(name_id(CLUSTER, cluster), request_id, milliseconds, data)
                await pending.done.wait()
            finally:
                del self._pending[request_id]
            if pending.status != RETRY:
                return pending
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
        deadline passed while queued are dropped, not handed out.
        """
        name = cluster or self.cluster
        if name is None:
            raise ConfigError("requests() needs a cluster (or join() one)")
        tree = name_id(CLUSTER, name)
        if tree in self._incoming:
            raise ConfigError(f"requests of {name!r} are already being received")
        limit = limit or DEFAULT_HANDLER_LIMIT
        async with self.join(name):
            incoming = IncomingRequests(lambda: self._report_spare(tree), self._stop_requests)
            self._incoming[tree] = (incoming, limit)
            self._report_spare(tree)
            try:
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
        runs under the request's deadline. An exception from the handler goes to
        the requester as RemoteError.
        """
        limit = limit or DEFAULT_HANDLER_LIMIT
        limiter = trio.CapacityLimiter(limit)
        async with self.requests(cluster, limit=limit) as incoming, trio.open_nursery() as tasks:
            task_status.started()
            while True:
                token = object()
                await limiter.acquire_on_behalf_of(token)
                request = await incoming.receive()
                tasks.start_soon(_handle, handler, request, limiter, token)

    def _report_spare(self, tree: int) -> None:
        incoming, limit = self._incoming.get(tree, (None, 0))
        if incoming is not None:
            self._driver.set_spare(tree, limit - incoming.in_flight - len(incoming))

    def _stop_requests(self, incoming: IncomingRequests) -> None:
        for tree, (queue, _) in list(self._incoming.items()):
            if queue is incoming:
                del self._incoming[tree]
                self._driver.set_spare(tree, 0)
        for request in incoming.take_all():
            self._answer(request, RETRY, b"the member stopped serving")

    def _on_request(self, delivery: RequestDelivery) -> None:
        request = delivery.request
        requester = from_bytes(request.requester)
        entry = self._incoming.get(delivery.tree)
        if entry is None:
            self._driver.reply(
                requester, request.request_id, RETRY, b"the member is not serving requests"
            )
            return
        incoming = entry[0]
        if incoming.queued_bytes + len(request.data) > MAX_QUEUED_BYTES:
            self._driver.reply(
                requester, request.request_id, OVERLOADED, b"the member's request queue is full"
            )
            return
        deadline = trio.current_time() + request.timeout_ms / 1000

        def answer(handled: Request, status: int, data: bytes) -> None:
            incoming._answered()
            self._answer(handled, status, data)

        incoming._push(Request(request.data, deadline, request.request_id, requester, answer))

    def _answer(self, request: Request, status: int, data: bytes) -> None:
        self._driver.reply(request.requester, request.request_id, status, data)


class _PendingRequest:
    __slots__ = ("data", "done", "status")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = REPLY
        self.data = b""


def _check_message(data: bytes) -> None:
    if type(data) is not bytes:
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(f"{len(data)} bytes exceed {MAX_MESSAGE_SIZE}")


async def _handle(
    handler: Callable[[bytes], Awaitable[bytes]],
    request: Request,
    limiter: trio.CapacityLimiter,
    token: object,
) -> None:
    try:
        with trio.move_on_at(request.deadline):  # late work is dropped
            try:
                result = await handler(request.data)
            except Exception as exc:  # the handler's failure goes to the requester
                await request.fail(str(exc) or type(exc).__name__)
            else:
                await request.reply(result)
    finally:
        limiter.release_on_behalf_of(token)


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
    discovery: DiscoveryMode | None = None,
    identity: NodeIdentity | None = None,
    config: OverlayConfig | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until cancelled (the composable form of :func:`join`).

    Reports the :class:`Node` through ``task_status``. See :func:`join` for the
    arguments.
    """
    chosen = _network(network, key)
    dev = chosen is DEV_NETWORK
    if dev:
        log.warning("iris_trio: dev network (loopback only; its key is published, not secret)")
    mode: DiscoveryMode = discovery or ("loopback" if dev else "lan")
    if dev and mode == "lan":
        raise ConfigError("the dev network discovers on loopback only")
    host, _, port = (listen or ("127.0.0.1:0" if dev else "0.0.0.0:0")).rpartition(":")
    driver = OverlayDriver(
        identity or NodeIdentity.generate(),
        chosen,
        host=host.strip("[]"),
        port=int(port),
        seeds=list(seeds),
        discovery=DiscoveryConfig(mode=mode),
        config=config,
    )
    node = Node(driver, cluster)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        if cluster is not None:
            driver.join_tree(name_id(CLUSTER, cluster))
        task_status.started(node)


@asynccontextmanager
async def join(
    cluster: str | None = None,
    *,
    network: str | Network | None = None,
    key: NetworkKey | bytes | None = None,
    listen: str | None = None,
    seeds: Sequence[str] = (),
    discovery: DiscoveryMode | None = None,
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
        discovery: "loopback", "lan" or "off" (dev: loopback; else lan).
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

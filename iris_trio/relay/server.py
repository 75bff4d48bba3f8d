"""The node's relay endpoint: Iris client libraries and other processes attach here.

:func:`serve_relay` listens on loopback only (127.0.0.1 and ::1) and runs one
:class:`~iris_trio.relay.connection.RelayConnection` task tree per client.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import TYPE_CHECKING, Final

import trio

from .._util import open_unwrapped_nursery
from .connection import RelayConnection
from .limits import RelayLimits, RelayTotals

if TYPE_CHECKING:
    from .._node import Node

__all__ = ["DEFAULT_PORT", "Relay", "RelayStatistics", "serve_relay"]

log = logging.getLogger("iris_trio.relay")

#: The port the original Iris node serves its clients on.
DEFAULT_PORT: Final = 55555
_HOSTS: Final = ("127.0.0.1", "::1")
#: Beyond the connection limit, this many more get a DENY; the rest are closed at once.
_REFUSING: Final = 64


@dataclasses.dataclass(frozen=True, slots=True)
class RelayStatistics:
    """Counters of a relay endpoint.

    Attributes:
        connections_accepted / connections_open: clients attached, ever and now.
        denied: handshakes refused (wrong magic or version, bad cluster).
        protocol_violations: connections closed for malformed input.
        closed_gracefully: connections ended by the client's CLOSE.
        unknown_replies: replies to requests that had already expired.
        events_dropped: events and broadcasts a slow client missed.
        internal_errors: connections ended by a failure of the relay itself.
        limits_exceeded: connections closed for going beyond a limit
            (``CLOSE("limit exceeded: ...")``); connections beyond
            ``RelayLimits.connections`` are denied instead (``denied``), once
            no connection that has not sent INIT is left to make room.
        evicted: connections that had not sent INIT, closed to make room for
            a new one at the connection limit.
        subscriptions / pending_requests / tunnels: what all clients hold now.
        buffered_bytes: event bytes buffered for all clients now (their
            subscriptions' buffers; not what waits in their send queues).
        queued_bytes: bytes waiting in all clients' send queues now.
    """

    connections_accepted: int
    connections_open: int
    denied: int
    protocol_violations: int
    closed_gracefully: int
    unknown_replies: int
    events_dropped: int
    internal_errors: int
    limits_exceeded: int = 0
    subscriptions: int = 0
    pending_requests: int = 0
    tunnels: int = 0
    buffered_bytes: int = 0
    queued_bytes: int = 0
    evicted: int = 0


class Relay:
    """A running relay endpoint (from :func:`serve_relay`).

    Attributes:
        node: the node it serves.
        addresses: the (host, port) pairs listened on.
        port: the port listened on (the one chosen, for port 0).
        limits: its :class:`RelayLimits`.

    Example::

        relay = await nursery.start(iris_trio.serve_relay, node, 0)
        print("relay on port", relay.port, relay.statistics().connections_open)
    """

    def __init__(self, node: Node, addresses: list[tuple[str, int]], limits: RelayLimits) -> None:
        self.node = node
        #: The (host, port) pairs listened on: 127.0.0.1 and ::1 (where available).
        self.addresses = addresses
        self.port = addresses[0][1]
        self.limits = limits
        self.counters: Counter[str] = Counter()
        self.connections: set[RelayConnection] = set()
        self._scopes: dict[RelayConnection, trio.CancelScope] = {}  # oldest first
        self.totals = RelayTotals(limits)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        limit = self.limits.connections
        if len(self.connections) >= limit:
            self._evict_one_silent()  # a client that never sent INIT makes room
        if len(self.connections) >= limit + _REFUSING:  # not even a DENY: close
            self.counters["denied"] += 1
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        refusal = None
        if len(self.connections) >= limit:
            refusal = f"The node serves {limit} relay clients, its most."
        connection = RelayConnection(
            self.node, stream, self.limits, self.counters, self.totals, refusal=refusal
        )
        self.connections.add(connection)
        self.counters["connections_accepted"] += 1
        try:
            with trio.CancelScope() as self._scopes[connection]:
                await connection.run()
        except Exception:  # a bug: it ends this client's connection, not the node
            self.counters["internal_errors"] += 1
            log.exception("relay connection failed")
        finally:
            self._scopes.pop(connection, None)
            self.connections.discard(connection)
            self.counters["events_dropped"] += connection.events_dropped

    def _evict_one_silent(self) -> None:
        """End the oldest connection that has not said INIT yet (silent sockets
        must not lock real clients out until their handshake timeout)."""
        for connection, scope in self._scopes.items():  # oldest first
            if not connection.greeted and not scope.cancel_called:
                self.counters["evicted"] += 1
                scope.cancel()
                self.connections.discard(connection)
                return

    def statistics(self) -> RelayStatistics:
        """The relay's counters (see :class:`RelayStatistics`)."""
        count = self.counters
        return RelayStatistics(
            connections_accepted=count["connections_accepted"],
            connections_open=len(self.connections),
            denied=count["denied"],
            protocol_violations=count["protocol_violations"],
            closed_gracefully=count["closed_gracefully"],
            unknown_replies=count["unknown_replies"],
            events_dropped=count["events_dropped"]
            + sum(c.events_dropped for c in self.connections),
            internal_errors=count["internal_errors"],
            limits_exceeded=count["limits_exceeded"],
            subscriptions=self.totals.subscriptions,
            pending_requests=self.totals.pending_requests,
            tunnels=self.totals.tunnels,
            buffered_bytes=self.totals.events.used,
            queued_bytes=sum(c.queued_bytes for c in self.connections),
            evicted=count["evicted"],
        )


async def _open_listeners(port: int) -> list[trio.SocketListener]:
    """Listeners on 127.0.0.1 and ::1 at one port (either may fail, not both)."""
    listeners: list[trio.SocketListener] = []
    failures: list[OSError] = []
    for host in _HOSTS:
        try:
            listeners += await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            failures.append(exc)
            continue
        if port == 0:  # the second address takes the port the first was given
            port = listeners[0].socket.getsockname()[1]
    if not listeners:
        raise OSError(f"the relay cannot listen on loopback port {port}: {failures[0]}")
    return listeners


async def serve_relay(
    node: Node,
    port: int = DEFAULT_PORT,
    *,
    limits: RelayLimits | None = None,
    task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the Iris relay protocol for ``node`` until cancelled.

    Listens on ``port`` (0: any free one) of 127.0.0.1 and ::1 only and reports
    the :class:`Relay` (its ``port`` is the one chosen) through ``task_status``.
    ``limits`` bound what clients can make the node hold (default
    ``RelayLimits()``). Example::

        async with iris_trio.join() as node, trio.open_nursery() as nursery:
            relay = await nursery.start(iris_trio.serve_relay, node, 0)
            print("relay on port", relay.port)

    Cancellation: the relay stops listening, every client gets CLOSE with a
    reason (written under a shield, a second at most), then its socket
    closes; the call returns once every client's tasks have ended. The node
    goes on: requests still queued for a service client go to other members,
    those handed to it and unanswered fail (they may have run). Cancelled
    before it has started, nothing is left listening.

    Raises:
        OSError: neither loopback address could be listened on.
    """
    listeners = await _open_listeners(port)
    addresses = [tuple(listener.socket.getsockname()[:2]) for listener in listeners]
    relay = Relay(node, addresses, limits or RelayLimits())
    log.info("relay listening on loopback port %d", relay.port)
    async with open_unwrapped_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, listener, relay, nursery)
        task_status.started(relay)


async def _accept(listener: trio.SocketListener, relay: Relay, nursery: trio.Nursery) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and the like: wait, keep serving
                log.warning("relay accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(relay._serve_client, stream)

"""The relay's limits: per client connection, and for all connections together.

Every resource a relay client can make the node hold is bounded twice: by the
connection's own limit and by a node-wide total across all relay connections,
so that neither one client nor many clients together can take the node's
memory or its overlay's time (docs/relay.md has the table).
"""

from __future__ import annotations

import dataclasses

import trio

from ..errors import ConfigError
from ..patterns.queue import ByteBudget
from ..patterns.tunnel import DEFAULT_WINDOW
from .codec import RelayProtocolError

__all__ = ["RelayLimitError", "RelayLimits", "RelayTotals"]

_MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class RelayLimits:
    """Limits of the relay, per connection and for all connections together.

    Attributes:
        handshake_timeout: seconds a new connection has to send INIT.
        pending_requests: the client's own requests in flight; beyond, its
            further packets wait (it is not read).
        served_requests: requests handed to a service connection at once (its
            capacity in the cluster's load balancing).
        queued_bytes: bytes queued for the client before producers wait (a
            larger packet is queued alone).
        event_buffer: events (and broadcasts) buffered per subscription when the
            client reads slowly; beyond, the oldest is dropped and counted.
        event_bytes: bytes buffered per subscription (and for broadcasts) when
            the client reads slowly; beyond, the oldest is dropped and counted
            (one event is always kept, whatever its size).
        buffered_bytes: bytes buffered by all subscriptions of one connection
            together; beyond, the fullest one drops its oldest event.
        subscriptions: topics one connection subscribes to; one more closes it.
        tunnels: tunnels open (or opening) on one connection.
        tunnel_window: bytes of allowance granted to the client per tunnel.
        max_tunnel_message: the largest tunnel message a client may send.
        confirm_timeout: seconds a service has to confirm an inbound tunnel.
        close_timeout: seconds a graceful CLOSE waits for in-flight work.
        connections: relay clients connected at once; one more is denied.
        total_subscriptions: subscriptions of all connections together; a
            connection whose subscription goes beyond is closed.
        total_buffered_bytes: bytes buffered by the subscriptions of all
            connections together; beyond, the fullest one drops its oldest event.
        total_pending_requests: requests in flight of all connections together;
            beyond, the connection that sends one more waits (is not read).
        total_tunnels: tunnels of all connections together; beyond, TUN_INIT is
            answered timed out and inbound tunnels wait.

    Raises:
        ConfigError: a count below 1 or a time that is not positive.

    Example::

        limits = RelayLimits(connections=64, total_buffered_bytes=64 * 1024 * 1024)
        relay = await nursery.start(
            functools.partial(iris_trio.serve_relay, node, limits=limits)
        )
    """

    handshake_timeout: float = 10.0
    pending_requests: int = 4096
    served_requests: int = 64
    queued_bytes: int = 4 * _MIB
    event_buffer: int = 4096
    event_bytes: int = 4 * _MIB
    buffered_bytes: int = 16 * _MIB
    subscriptions: int = 1024
    tunnels: int = 1024
    tunnel_window: int = DEFAULT_WINDOW
    max_tunnel_message: int = 64 * _MIB
    confirm_timeout: float = 10.0
    close_timeout: float = 30.0
    connections: int = 1024
    total_subscriptions: int = 2048
    total_buffered_bytes: int = 256 * _MIB
    total_pending_requests: int = 16384
    total_tunnels: int = 4096

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not value > 0:
                raise ConfigError(f"RelayLimits.{field.name} must be positive, not {value}")
            if isinstance(value, int) and value < 1:
                raise ConfigError(f"RelayLimits.{field.name} must be at least 1, not {value}")


class RelayLimitError(RelayProtocolError):
    """A client went beyond a limit that has no answer in the protocol (its
    connection is closed with ``CLOSE("limit exceeded: ...")``)."""


class RelayTotals:
    """What all connections of one relay hold together, against the node-wide
    limits of :class:`RelayLimits`."""

    def __init__(self, limits: RelayLimits) -> None:
        self.limits = limits
        #: The subscription buffers of every connection.
        self.events = ByteBudget(limits.total_buffered_bytes)
        self.subscriptions = 0
        self.tunnels = 0
        self.pending_requests = 0
        self.request_slots = trio.Semaphore(limits.total_pending_requests)
        #: Woken whenever a tunnel ends (inbound tunnels wait for room).
        self.tunnel_ended = trio.lowlevel.ParkingLot()

    def tunnel_closed(self) -> None:
        """A tunnel counted in :attr:`tunnels` ended."""
        self.tunnels -= 1
        self.tunnel_ended.unpark_all()

"""Overlay configuration."""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError

__all__ = ["OverlayConfig"]


@dataclasses.dataclass(frozen=True, slots=True)
class OverlayConfig:
    """Timing and sizing of the overlay (times in seconds).

    Attributes:
        leaf_size: leaf set members kept on each side.
        heartbeat_interval: an idle connection carries a heartbeat this often.
        suspect_after: a peer silent this long is avoided when routing.
        dead_after: a peer silent this long is declared dead and dropped (a
            silent failure is gone everywhere within about this plus one
            heartbeat interval). Merely slow peers keep talking and stay.
        exchange_interval: each node pushes its state to one random neighbour
            this often (anti-entropy: repairs tables, merges healed partitions).
        ack_timeout: a routed hop not acknowledged in this time (or in the
            peer's measured acknowledgement time, if longer) is resent to the
            same next hop while it is connected, through another once it is gone.
        ack_delay: an acknowledgement waits at most this long for a routed
            message going back the same way to ride on (then it goes alone).
        route_attempts: sends to one next hop before trying another, and other
            next hops tried before the message is dropped.
        dedupe_window: message ids remembered for duplicate suppression.
        max_hops: a routed message travelling further is dropped (loop guard).
        dial_backoff: an address that failed to connect is not redialled from
            gossip for this long.
        idle_connection_grace: a connection to a node in neither table is
            closed after this long (connections stay bounded).
        tick_interval: how often the driver should call ``tick`` at least.
        join_quiet: a node with peers is *joined* (ready) once every dial
            towards its seeds and leaf set has ended, every leaf has told it its
            state, and its leaf set has then been unchanged for this long.
        join_window: a node that found nobody is joined (alone) after this long
            with discovery on: beacons went out and others had time to answer.
            (With discovery off it is joined once its seeds were tried.)
        join_limit: a node counts as joined after this long whatever else holds
            (a seed that never answers must not hold it back for ever).
        split_check_interval: a node with peers dials, this often (with
            jitter), one of its seeds or of the addresses of peers it lost that
            it has no connection to: if the ring split (a partition healed, a
            node was frozen a while), the state exchanged on that connection
            merges the two rings again. One connection per interval: cheap.
        lost_addresses / lost_for: the most addresses of lost peers kept for
            that, and for how long (seconds).

    Raises:
        ConfigError: a value out of range (say ``heartbeat_interval`` not below
            ``suspect_after``), when it is made.

    ``config=`` of :func:`iris_trio.join` takes one; the defaults suit most
    networks (give every node of one network the same). Example::

        config = OverlayConfig(heartbeat_interval=2.0, suspect_after=5.0, dead_after=8.0)
        async with iris_trio.join("calc", config=config) as node:
            ...
    """

    leaf_size: int = 8
    heartbeat_interval: float = 1.0
    suspect_after: float = 2.5
    dead_after: float = 4.0
    exchange_interval: float = 5.0
    ack_timeout: float = 0.5
    ack_delay: float = 0.02
    route_attempts: int = 4
    dedupe_window: float = 30.0
    max_hops: int = 48
    dial_backoff: float = 15.0
    idle_connection_grace: float = 20.0
    tick_interval: float = 0.25
    join_quiet: float = 0.25
    join_window: float = 2.0
    join_limit: float = 10.0
    split_check_interval: float = 15.0
    lost_addresses: int = 32
    lost_for: float = 600.0

    def __post_init__(self) -> None:
        if self.leaf_size < 1:
            raise ConfigError("leaf_size must be at least 1")
        if not 0 < self.heartbeat_interval < self.suspect_after < self.dead_after:
            raise ConfigError("need 0 < heartbeat_interval < suspect_after < dead_after")
        for name in (
            "exchange_interval",
            "ack_timeout",
            "dedupe_window",
            "dial_backoff",
            "idle_connection_grace",
            "tick_interval",
            "join_limit",
            "split_check_interval",
            "lost_for",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if not 0 < self.ack_delay < self.ack_timeout / 2:
            raise ConfigError("need 0 < ack_delay < ack_timeout / 2")
        if self.join_quiet < 0 or self.join_window < 0:
            raise ConfigError("join_quiet and join_window must not be negative")
        if self.route_attempts < 1 or self.max_hops < 1:
            raise ConfigError("route_attempts and max_hops must be at least 1")

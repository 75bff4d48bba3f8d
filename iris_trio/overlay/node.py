"""The overlay state machine: Pastry membership, liveness and routing, sans-IO.

Inputs are method calls carrying ``now`` (seconds, any monotonic clock);
outputs are effects collected in an outbox the driver drains with
:meth:`OverlayNode.take_effects`: dial an address, send a frame to a connected
peer, close a connection, deliver a routed message here. Nothing here does I/O
or reads a clock, so a simulator can run thousands of nodes deterministically.

Membership works the way Iris's overlay does: a node connects to any known
node, both exchange their state (leaf set and routing table, with addresses),
and each dials the nodes it learns of that belong in its own tables, until no
new candidate improves them. Only nodes reached over a live connection enter
the tables, so gossip about dead nodes (old or replayed state) changes nothing.
Every connection carries heartbeats; a closed connection removes the peer at
once, a silent one is avoided after ``suspect_after`` and dropped after
``dead_after``. Leaf set changes are pushed to the leaf set, whose answers
refill it; a periodic state exchange with a random neighbour repairs the
routing table and merges rings after a partition heals.

Routed messages are acknowledged hop by hop; an unacknowledged hop is resent,
through another next hop when the first is suspected or gone, and duplicates
are suppressed by message id.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
from collections.abc import Callable
from itertools import chain

from ..wire.frames import Frame
from .config import OverlayConfig
from .frames import MAX_ACKS, Heartbeat, Leave, NodeRef, OverlayState, Route, RouteAck
from .ids import clockwise, from_bytes, ring_distance, shared_prefix, short, to_bytes
from .leafset import LeafSet
from .routing_table import RoutingTable

#: Routed message ids remembered at most (about 20 MB).
_MAX_SEEN = 1 << 17

__all__ = [
    "Connect",
    "Deliver",
    "Disconnect",
    "Effect",
    "ForwardHook",
    "Lost",
    "OverlayNode",
    "OverlayStatistics",
    "Send",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Connect:
    """Dial ``address`` (believed to be node ``node``, if known)."""

    address: str
    node: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send ``frame`` over the connection to ``node``."""

    node: int
    frame: Frame


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection to ``node``."""

    node: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Deliver:
    """A routed message arrived at the node closest to its key: this one.

    ``previous`` is the peer it came from (None when it started here).
    """

    route: Route
    previous: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Lost:
    """A routed message that must not take another path (see
    :attr:`OverlayNode.at_most_once`) lost its next hop before that hop
    acknowledged it: it may or may not have gone on from there."""

    route: Route


Effect = Connect | Send | Disconnect | Deliver | Lost
_USELESS_CAP = 2048
#: Called as ``hook(route, previous, next_hop)`` before a routed message is
#: forwarded (``previous`` is None where it starts); returning False consumes it
#: here (tree joins stop at the first tree member on the path).
ForwardHook = Callable[[Route, int | None, int], bool]


@dataclasses.dataclass(frozen=True, slots=True)
class OverlayStatistics:
    """A snapshot of a node's overlay state and counters."""

    node_id: str
    peers: int
    leaf_set: int
    table_entries: int
    table_rows: int
    routed: int
    forwarded: int
    delivered: int
    duplicates: int
    rerouted: int
    dropped: int
    peers_declared_dead: int
    maintenance_sent: int


#: Pauses between rounds of dialling the seeds while a node is alone (seconds).
_SEED_RETRY_MIN, _SEED_RETRY_MAX = 1.0, 30.0


class _Peer:
    __slots__ = (
        "address",
        "connected_at",
        "last_heard",
        "last_sent",
        "outbound",
        "ref",
        "rttvar",
        "srtt",
        "state_received",
        "suspected",
    )

    def __init__(self, node: int, address: str, now: float, *, outbound: bool) -> None:
        # Smoothed time from sending a hop to its acknowledgement, and its
        # variation (as TCP's retransmission timer): a peer that is merely behind
        # under load is given longer before a hop is sent again.
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.address = address
        self.ref: NodeRef = (to_bytes(node), address)
        self.outbound = outbound
        self.connected_at = now
        self.last_heard = now
        self.last_sent = now
        self.suspected = False
        #: True once the peer told us its state (its leaves and table).
        self.state_received = False


class _Dial:
    """A connection attempt and what it is for."""

    __slots__ = ("leaf", "node", "since", "slot")

    def __init__(
        self,
        since: float,
        node: int | None,
        *,
        leaf: bool = False,
        slot: tuple[int, int] | None = None,
    ) -> None:
        self.since = since
        self.node = node
        self.leaf = leaf
        self.slot = slot


class _Pending:
    """A forwarded hop awaiting its acknowledgement."""

    __slots__ = (
        "attempts",
        "deadline",
        "frame",
        "key",
        "next_hop",
        "previous",
        "reroutes",
        "sent_at",
        "tried",
    )

    def __init__(
        self,
        frame: Route,
        key: int,
        next_hop: int,
        deadline: float,
        previous: int | None,
        sent_at: float,
    ) -> None:
        self.sent_at = sent_at
        self.previous = previous
        self.frame = frame
        self.key = key
        self.next_hop = next_hop
        self.deadline = deadline
        self.attempts = 1
        self.reroutes = 0
        self.tried = {next_hop}


class OverlayNode:
    """One node's Pastry state.

    Args:
        node_id: this node's 128-bit id.
        address: the address others dial to reach this node.
        config: timing and sizing.
        rng: randomness (message ids, neighbour choice); seed it to replay.
        forward: optional upcall before each forward (see :data:`ForwardHook`).
    """

    def __init__(
        self,
        node_id: int,
        address: str,
        *,
        config: OverlayConfig | None = None,
        rng: random.Random | None = None,
        forward: ForwardHook | None = None,
    ) -> None:
        self.id = node_id
        self.address = address
        self.config = config or OverlayConfig()
        self.rng = rng or random.Random()
        self.forward_hook = forward
        #: Tells which routed messages may be delivered at most once: such a
        #: message is retried on its hop while that hop is up (its receiver drops
        #: copies), but never sent another way once the hop is gone or suspected
        #: (the hop may have passed it on already): it becomes a :class:`Lost`.
        self.at_most_once: Callable[[Route], bool] | None = None
        self.leaves = LeafSet(node_id, self.config.leaf_size)
        #: When the leaf set last changed (which node is closest to a key may have).
        self.leaves_changed_at = -math.inf
        self.table = RoutingTable(node_id)
        #: Peers the layers above keep connected (tree links), whatever the tables say.
        self.pinned: set[int] = set()
        #: Peers the patterns keep connected (tunnel ends), counted per holder.
        self.held: collections.Counter[int] = collections.Counter()
        self._peers: dict[int, _Peer] = {}
        self._own_ref: NodeRef = (to_bytes(node_id), address)
        self._peer_ids: set[bytes] = set()  # wire ids of peers, to skip gossip cheaply
        self._upgrades: dict[tuple[int, int], tuple[int, str]] = {}
        # Gossiped nodes that improve neither table: skipped until an entry is
        # removed (only a removal can make one of them useful).
        self._useless: set[bytes] = set()
        self._dialing: dict[str, _Dial] = {}
        self._leaf_dials: set[int] = set()  # nodes dialled for the leaf set
        self._filling: set[tuple[int, int]] = set()  # vacant slots being dialled
        self._backoff: dict[str, float] = {}
        self._pending: dict[bytes, _Pending] = {}
        # Acknowledgements we owe, per peer: they ride on the next Route to that
        # peer, or go in one RouteAck once ``ack_delay`` has passed.
        self._acks_owed: dict[int, list[bytes]] = {}
        self._ack_due = math.inf
        # Message ids seen, oldest first: an OrderedDict, because a plain dict
        # emptied from the front makes each next(iter()) scan the holes (quadratic).
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._outbox: list[Effect] = []
        self._now = 0.0
        self._repair_leaves = False
        self._next_exchange = 0.0
        self._started_at: float | None = None
        self._seeds: list[str] = []
        self._seed_retry = 0.0  # the pause before seeds are dialled again (grows)
        self._next_seed_dial = math.inf
        # Addresses of peers this node lost, and when (oldest first), and when
        # the next check for a split ring is due (see split_check_interval).
        self._lost_addresses: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._next_split_check = math.inf
        self._split_checks = 0
        self._lone_ready_at = math.inf
        self._ready = False
        self._routed = self._forwarded = self._delivered = self._duplicates = 0
        self._rerouted = self._dropped = self._dead = self._maintenance = 0
        self._lost = 0

    def __repr__(self) -> str:
        return f"<OverlayNode {short(self.id)} peers={len(self._peers)}>"

    # ---------------------------------------------------------------- queries

    @property
    def peers(self) -> dict[int, str]:
        """Connected peers and their addresses."""
        return {node: peer.address for node, peer in self._peers.items()}

    def is_connected(self, node: int) -> bool:
        """True if a connection to ``node`` is up."""
        return node in self._peers

    def connected_since(self, node: int) -> float:
        """When the connection to ``node`` came up (KeyError if it is not up)."""
        return self._peers[node].connected_at

    def peer_rtt(self, node: int) -> float | None:
        """The smoothed round-trip time to ``node`` in seconds (a hop to its
        acknowledgement), or None: not connected, or nothing measured yet."""
        peer = self._peers.get(node)
        return None if peer is None else peer.srtt

    def statistics(self) -> OverlayStatistics:
        """A snapshot of the node's state and counters."""
        return OverlayStatistics(
            node_id=f"{self.id:032x}",
            peers=len(self._peers),
            leaf_set=len(self.leaves),
            table_entries=len(self.table),
            table_rows=self.table.filled_rows(),
            routed=self._routed,
            forwarded=self._forwarded,
            delivered=self._delivered,
            duplicates=self._duplicates,
            rerouted=self._rerouted,
            dropped=self._dropped,
            peers_declared_dead=self._dead,
            maintenance_sent=self._maintenance,
        )

    @property
    def has_effects(self) -> bool:
        """True when :meth:`take_effects` has something to return."""
        return bool(self._outbox)

    def take_effects(self) -> list[Effect]:
        """Remove and return the effects produced so far, in order."""
        effects, self._outbox = self._outbox, []
        return effects

    def next_deadline(self) -> float:
        """When :meth:`tick` should run next at the latest."""
        return min(self._now + self.config.tick_interval, self._ack_due)

    # ----------------------------------------------------------------- inputs

    @property
    def ready(self) -> bool:
        """True once this node has joined the overlay (see :meth:`check_ready`)."""
        return self._ready

    def check_ready(self, now: float) -> bool:
        """Whether this node has joined: it knows its place in the ring well
        enough that "nobody is there" is an answer to trust.

        With peers: no dial towards a seed or a leaf is under way, every leaf
        has sent its state, and the leaf set has been quiet for ``join_quiet``.
        Alone: its seeds were all tried and, with discovery on, ``join_window``
        has passed since it started. In any case after ``join_limit``. Once
        joined, a node stays joined (a later change is handled by the trees'
        settling rules, not by going back to joining).
        """
        if self._ready:
            return True
        started = self._started_at
        if started is None:
            return False
        config = self.config
        if now - started >= config.join_limit:
            self._ready = True
        elif any(dial.node is None or dial.leaf for dial in self._dialing.values()):
            return False
        elif len(self.leaves):
            self._ready = now - self.leaves_changed_at >= config.join_quiet and all(
                self._peers[node].state_received for node in self.leaves
            )
        else:
            self._ready = now >= self._lone_ready_at
        return self._ready

    def start(self, now: float, seeds: list[str], *, discovery: bool = False) -> None:
        """Join through ``seeds`` (addresses); with none, wait to be found.

        ``discovery``: beacons are looking for others too, so a node that finds
        nobody waits ``join_window`` before it counts as joined alone.
        """
        self._now = now
        self._started_at = now
        self._lone_ready_at = now + (self.config.join_window if discovery else 0.0)
        self._seeds = [address for address in seeds if address != self.address]
        self._dial_seeds(now)
        self._next_split_check = now + self.config.split_check_interval
        self._next_exchange = now + self.config.exchange_interval * self.rng.uniform(0.5, 1.0)

    def _dial_seeds(self, now: float) -> None:
        """Dial every seed not being dialled; while this node stays alone, again
        after a pause that doubles (with jitter) up to ``_SEED_RETRY_MAX``."""
        for address in self._seeds:
            if address not in self._dialing:
                self._dial(address, _Dial(now, None))
        if self._seeds:
            retry = self._seed_retry
            # The first pause has no jitter: randomness is drawn only once a
            # node has stayed alone (so runs that never do replay unchanged).
            jitter = self.rng.uniform(0.75, 1.25) if retry else 1.0
            self._seed_retry = min(_SEED_RETRY_MAX, max(_SEED_RETRY_MIN, retry * 2))
            self._next_seed_dial = now + self._seed_retry * jitter

    def _check_split(self, now: float) -> None:
        """Dial one seed or lost peer's address that this node has no connection
        to (in turn): if it is in another ring, the two merge (see
        ``OverlayConfig.split_check_interval``)."""
        config = self.config
        self._next_split_check = now + config.split_check_interval * self.rng.uniform(0.75, 1.25)
        while self._lost_addresses:
            address, lost_at = next(iter(self._lost_addresses.items()))
            if now - lost_at <= config.lost_for:
                break
            del self._lost_addresses[address]
        connected = {peer.address for peer in self._peers.values()}
        candidates = [
            address
            for address in (*self._seeds, *self._lost_addresses)
            if address not in connected and address not in self._dialing and address != self.address
        ]
        if candidates:
            address = candidates[self._split_checks % len(candidates)]
            self._split_checks += 1
            self._dial(address, _Dial(now, None))

    def _remember_lost(self, address: str, now: float) -> None:
        lost = self._lost_addresses
        lost.pop(address, None)
        lost[address] = now
        while len(lost) > self.config.lost_addresses:
            lost.popitem(last=False)

    def discovered(self, now: float, node: int, address: str) -> None:
        """A discovery beacon announced ``node`` at ``address``."""
        self._now = now
        self._consider(node, address, now)

    def connected(self, now: float, node: int, address: str) -> None:
        """A connection to ``node`` is up (dialled by us or accepted).

        ``address`` is where the node accepts connections (what others dial).
        """
        self._now = now
        outbound = self._end_dial(address) is not None
        if node == self.id:
            self._outbox.append(Disconnect(node, "connected to self"))
            return
        if node in self._peers:
            return
        peer = self._peers[node] = _Peer(node, address, now, outbound=outbound)
        self._peer_ids.add(peer.ref[0])
        if self.leaves.add(node):
            self.leaves_changed_at = now
        self.table.add(node)
        self._send_state(node, reply=False)  # both ends do: one state each way

    def connect_failed(self, now: float, address: str) -> None:
        """Dialling ``address`` failed."""
        self._now = now
        self._end_dial(address)
        self._backoff[address] = now + self.config.dial_backoff

    def disconnected(self, now: float, node: int) -> None:
        """The connection to ``node`` closed (the peer died or closed it)."""
        self._now = now
        self._drop(node, now, reason=None)

    def heard(self, node: int, at: float) -> None:
        """Evidence from the link to ``node`` that the peer spoke at ``at`` (data
        arrived then, perhaps not read yet): liveness is judged by what the peer
        sent, not by whether this node got round to reading it."""
        peer = self._peers.get(node)
        if peer is not None and at > peer.last_heard:
            peer.last_heard = at

    def received(self, now: float, node: int, frame: Frame) -> None:
        """``frame`` arrived from the connected peer ``node``.

        Frames of other layers may be passed too: any frame proves the peer alive.
        """
        self._now = now
        peer = self._peers.get(node)
        if peer is None:
            return
        peer.last_heard = now
        peer.suspected = False
        kind = type(frame)
        if kind is Route:
            assert isinstance(frame, Route)
            for message_id in frame.acks:
                self._acked(node, message_id)
            self._owe_ack(node, frame.message_id)
            if frame.message_id in self._seen:
                self._duplicates += 1
                return
            self._remember(frame.message_id, now)
            self._forward_or_deliver(frame, from_bytes(frame.key), now, previous=node)
        elif kind is RouteAck:
            assert isinstance(frame, RouteAck)
            for message_id in frame.message_ids:
                self._acked(node, message_id)
        elif kind is OverlayState:
            assert isinstance(frame, OverlayState)
            peer.state_received = True
            known, useless, own = self._peer_ids, self._useless, self._own_ref[0]
            for raw, address in chain(frame.leaves, frame.table):
                if (
                    raw not in known
                    and raw not in useless
                    and raw != own
                    and not self._consider(from_bytes(raw), address, now)
                ):
                    if len(useless) >= _USELESS_CAP:
                        useless.clear()  # a cache: bounded memory, at worst rechecked
                    useless.add(raw)
            if frame.reply:
                self._send_state(node, reply=False)
        elif kind is Leave:
            self._drop(node, now, reason="peer left")

    def route(self, now: float, key: int, payload: bytes) -> bytes:
        """Route ``payload`` to the live node closest to ``key``; returns the message id."""
        self._now = now
        message_id = self.rng.randbytes(16)
        self._remember(message_id, now)
        self._routed += 1
        frame = Route(message_id, to_bytes(key), to_bytes(self.id), 0, payload)
        self._forward_or_deliver(frame, key, now, previous=None)
        return message_id

    def send_direct(self, now: float, node: int, frame: Frame) -> bool:
        """Send ``frame`` to the connected peer ``node``; False if not connected."""
        self._now = now
        if node not in self._peers:
            return False
        self._send(node, frame)
        return True

    def leave(self, now: float) -> None:
        """Leave gracefully: tell every peer, then close every connection."""
        self._now = now
        for node in list(self._peers):
            self._send(node, Leave())
            self._outbox.append(Disconnect(node, "leaving"))
        self._peers.clear()
        self._peer_ids.clear()
        self.leaves = LeafSet(self.id, self.config.leaf_size)
        self.table = RoutingTable(self.id)
        self._pending.clear()

    def tick(self, now: float) -> None:
        """Run timers: heartbeats, failure detection, retransmission, gossip."""
        self._now = now
        config = self.config
        for node, peer in list(self._peers.items()):
            silent = now - peer.last_heard
            if silent > config.dead_after:
                self._drop(node, now, reason=f"silent for {silent:.1f} s")
                continue
            peer.suspected = silent > config.suspect_after
            if now - peer.last_sent >= config.heartbeat_interval:
                self._maintenance += 1
                self._send(node, Heartbeat())
            # Connections stay bounded: the dialling side closes a connection
            # neither of its tables needs (the other side keeps what it dialled).
            if (
                peer.outbound
                and now - peer.connected_at > config.idle_connection_grace
                and node not in self.leaves
                and node not in self.table
                and node not in self.pinned
                and not self.held[node]
            ):
                self._drop(node, now, reason="not needed by the tables")
        if not self._peers and now >= self._next_seed_dial:
            self._dial_seeds(now)  # alone: the seeds may be up by now
        elif self._peers:
            self._seed_retry = 0.0
            self._next_seed_dial = now
            if now >= self._next_split_check:
                self._check_split(now)
        if now >= self._ack_due:
            self.flush_acks(now)
        self._retransmit(now)
        self._expire(now)
        while self._upgrades:
            slot = next(iter(self._upgrades))
            candidate, address = self._upgrades.pop(slot)
            if candidate not in self._peers and self.table.would_admit(candidate):
                self._consider_now(candidate, address, now)
                break
        if self._repair_leaves:
            # A leaf went away: the outermost leaf on each side knows the nodes
            # beyond our range; its answer brings the replacement.
            self._repair_leaves = False
            for node in {*self.leaves.right[-1:], *self.leaves.left[-1:]}:
                self._send_state(node, reply=True)
        if now >= self._next_exchange:
            self._next_exchange = now + config.exchange_interval * self.rng.uniform(0.75, 1.25)
            neighbours = list(chain(self.leaves, self.table))
            if neighbours:
                self._send_state(self.rng.choice(neighbours), reply=True)

    # --------------------------------------------------------------- internals

    def _send(self, node: int, frame: Frame) -> None:
        peer = self._peers.get(node)
        if peer is not None:
            peer.last_sent = self._now
            if type(frame) is Route:  # carry what we owe this peer (and nothing else)
                owed = self._acks_owed.pop(node, None)
                frame = Route(
                    frame.message_id,
                    frame.key,
                    frame.origin,
                    frame.hops,
                    frame.payload,
                    tuple(owed) if owed else (),
                )
            self._outbox.append(Send(node, frame))

    def _remember(self, message_id: bytes, now: float) -> None:
        """Note a routed message for duplicate suppression (memory stays bounded:
        beyond ``_MAX_SEEN`` ids, the oldest are forgotten before their window)."""
        seen = self._seen
        seen[message_id] = now
        if len(seen) > _MAX_SEEN:
            seen.popitem(last=False)

    def _acked(self, node: int, message_id: bytes) -> None:
        pending = self._pending.pop(message_id, None)
        if pending is None or pending.attempts != 1 or pending.next_hop != node:
            return  # only first sends measure the round trip (Karn's rule)
        peer = self._peers.get(node)
        if peer is not None:
            sample = self._now - pending.sent_at
            if peer.srtt is None:
                peer.srtt, peer.rttvar = sample, sample / 2
            else:
                peer.rttvar = 0.75 * peer.rttvar + 0.25 * abs(peer.srtt - sample)
                peer.srtt = 0.875 * peer.srtt + 0.125 * sample

    def _ack_timeout(self, node: int) -> float:
        """How long a hop to ``node`` waits for its acknowledgement."""
        floor = self.config.ack_timeout
        peer = self._peers.get(node)
        if peer is None or peer.srtt is None:
            return floor
        return min(max(floor, peer.srtt + 4 * peer.rttvar), self.config.dead_after)

    def _owe_ack(self, node: int, message_id: bytes) -> None:
        owed = self._acks_owed.get(node)
        if owed is None:
            self._acks_owed[node] = [message_id]
            self._ack_due = min(self._ack_due, self._now + self.config.ack_delay)
        else:
            owed.append(message_id)
            if len(owed) >= MAX_ACKS:
                del self._acks_owed[node]
                self._send(node, RouteAck(tuple(owed)))

    @property
    def ack_due(self) -> float:
        """When owed acknowledgements must go out (inf: none are owed)."""
        return self._ack_due

    def flush_acks(self, now: float) -> None:
        """Send every owed acknowledgement now."""
        self._now = now
        owed_by_peer, self._acks_owed = self._acks_owed, {}
        self._ack_due = math.inf
        for node, owed in owed_by_peer.items():
            self._send(node, RouteAck(tuple(owed)))

    def _send_state(self, node: int, *, reply: bool) -> None:
        peers = self._peers
        leaves = (self._own_ref, *[peers[n].ref for n in self.leaves])
        table = tuple([peers[n].ref for n in self.table])
        self._maintenance += 1
        self._send(node, OverlayState(leaves, table, reply))

    def _dial(self, address: str, dial: _Dial) -> None:
        self._dialing[address] = dial
        if dial.leaf and dial.node is not None:
            self._leaf_dials.add(dial.node)
        if dial.slot is not None:
            self._filling.add(dial.slot)
        self._outbox.append(Connect(address, dial.node))

    def _end_dial(self, address: str) -> _Dial | None:
        dial = self._dialing.pop(address, None)
        if dial is not None:
            if dial.node is not None:
                self._leaf_dials.discard(dial.node)
            if dial.slot is not None:
                self._filling.discard(dial.slot)
        return dial

    def _joins_leaves(self, node: int) -> bool:
        """True if ``node`` would be a leaf even counting the leaves being dialled."""
        if not self.leaves.would_admit(node):
            return False
        owner, size = self.id, self.leaves.size
        pool = [*self.leaves, *self._leaf_dials]
        after = clockwise(owner, node)
        before = clockwise(node, owner)
        return (
            sum(1 for p in pool if clockwise(owner, p) < after) < size
            or sum(1 for p in pool if clockwise(p, owner) < before) < size
        )

    def _consider(self, node: int, address: str, now: float) -> bool:
        """Dial ``node`` if it improves a table; False if it is of no use now."""
        if node == self.id or node in self._peers or address in self._dialing:
            return True
        if self._backoff.get(address, 0.0) > now:
            return True
        if self._joins_leaves(node):
            self._dial(address, _Dial(now, node, leaf=True))
            return True
        slot = self.table.slot(node)
        if self.table.is_vacant(node) and slot not in self._filling:
            self._dial(address, _Dial(now, node, slot=slot))
            return True
        if not self.table.would_admit(node):
            return False
        # A better entry for an occupied slot: dialled later, one per tick, so
        # that routing tables improve without a storm of connections.
        best = self._upgrades.get(slot)
        if best is None or self.table.prefers(node, best[0]):
            self._upgrades[slot] = (node, address)
        return True

    def _consider_now(self, node: int, address: str, now: float) -> None:
        if address not in self._dialing and self._backoff.get(address, 0.0) <= now:
            self._dial(address, _Dial(now, node, slot=self.table.slot(node)))

    def _drop(self, node: int, now: float, *, reason: str | None) -> None:
        peer = self._peers.pop(node, None)
        if peer is None:
            return
        self._acks_owed.pop(node, None)
        self._peer_ids.discard(peer.ref[0])
        if reason is None or reason.startswith("silent"):  # not a goodbye, not idle
            self._remember_lost(peer.address, now)
        if reason is not None:  # we decided: close the connection
            self._dead += reason.startswith("silent")
            self._outbox.append(Disconnect(node, reason))
        if self.leaves.remove(node):
            self.leaves_changed_at = now
            # Connected peers that were beyond the leaf set may belong in it now.
            for peer_id in self._peers:
                self.leaves.add(peer_id)
            self._repair_leaves = True
            self._useless.clear()
        if self.table.remove(node):
            self._useless.clear()
        for pending in [p for p in self._pending.values() if p.next_hop == node]:
            self._resend(pending, now, gone=True)

    def next_hop(self, key: int) -> int | None:
        """Where a message for ``key`` would go now; None if it would be delivered here."""
        return self._next_hop(key)

    def _usable(self, node: int, exclude: set[int] | tuple[()]) -> bool:
        peer = self._peers.get(node)
        return peer is not None and not peer.suspected and node not in exclude

    def _next_hop(self, key: int, exclude: set[int] | tuple[()] = ()) -> int | None:
        """The peer to forward to, or None when this node is the closest it knows."""
        own = self.id
        if self.leaves.covers(key):
            # The last hop goes to the closest node even when it is merely
            # suspected: delivering elsewhere would be wrong, and if it really
            # is dead its connection closes and the message is rerouted.
            best, best_rank = own, (ring_distance(own, key), own)
            for node in self.leaves:
                if node in self._peers and node not in exclude:
                    rank = (ring_distance(node, key), node)
                    if rank < best_rank:
                        best, best_rank = node, rank
            return None if best == own else best
        entry = self.table.lookup(key)
        if entry is not None and self._usable(entry, exclude):
            return entry
        # The rare case: any known node sharing as long a prefix and closer.
        found: int | None = None
        found_rank = (shared_prefix(own, key), -ring_distance(own, key))
        for node in chain(self.leaves, self.table):
            if self._usable(node, exclude):
                rank = (shared_prefix(node, key), -ring_distance(node, key))
                if rank > found_rank:
                    found, found_rank = node, rank
        return found

    def _forward_or_deliver(
        self, frame: Route, key: int, now: float, *, previous: int | None
    ) -> None:
        next_hop = self._next_hop(key)
        if next_hop is None:
            self._delivered += 1
            self._outbox.append(Deliver(frame, previous))
            return
        if self.forward_hook is not None and not self.forward_hook(frame, previous, next_hop):
            return
        if frame.hops >= self.config.max_hops:
            self._dropped += 1
            return
        forwarded = Route(frame.message_id, frame.key, frame.origin, frame.hops + 1, frame.payload)
        self._forwarded += 1
        self._send(next_hop, forwarded)
        self._pending[frame.message_id] = _Pending(
            forwarded, key, next_hop, now + self._ack_timeout(next_hop), previous, now
        )

    def _resend(self, pending: _Pending, now: float, *, gone: bool = False) -> None:
        """Send an unacknowledged hop again.

        While its next hop is connected the same hop is retried, each time
        waiting twice as long (a lost frame or a slow peer; another path could
        deliver twice); once the hop is gone, or after ``route_attempts`` tries
        (twice as many while the peer is not suspected), the message goes through
        another next hop. The wait adapts to each peer's measured acknowledgement
        time, so a peer that is merely behind under load is not flooded with
        copies.
        """
        message_id = pending.frame.message_id
        config = self.config
        peer = None if gone else self._peers.get(pending.next_hop)
        if peer is not None and (
            pending.attempts < config.route_attempts
            # A live peer that is merely slow keeps its hops longer: sending them
            # elsewhere would deliver to the wrong node.
            or (not peer.suspected and pending.attempts < 2 * config.route_attempts)
        ):
            pending.attempts += 1
            backoff = 2 ** min(pending.attempts - 1, 4)
            pending.deadline = now + self._ack_timeout(pending.next_hop) * backoff
            self._send(pending.next_hop, pending.frame)
            return
        if pending.reroutes >= config.route_attempts:
            del self._pending[message_id]
            self._dropped += 1
            return
        if self.at_most_once is not None and self.at_most_once(pending.frame):
            del self._pending[message_id]
            self._lost += 1
            self._outbox.append(Lost(pending.frame))
            return
        next_hop = self._next_hop(pending.key, exclude=pending.tried)
        if next_hop is None:
            # Nobody closer is reachable: this node is now the closest live one.
            del self._pending[message_id]
            self._delivered += 1
            self._outbox.append(Deliver(pending.frame, pending.previous))
            return
        self._rerouted += 1
        pending.reroutes += 1
        pending.attempts = 1
        pending.next_hop = next_hop
        pending.tried.add(next_hop)
        pending.sent_at = now
        pending.deadline = now + self._ack_timeout(next_hop)
        self._send(next_hop, pending.frame)

    def _retransmit(self, now: float) -> None:
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self._resend(pending, now)

    def _expire(self, now: float) -> None:
        horizon = now - self.config.dedupe_window
        seen = self._seen
        while seen:
            at = next(iter(seen.values()))
            if at > horizon:
                break
            seen.popitem(last=False)
        for address in [a for a, d in self._dialing.items() if now - d.since > 30.0]:
            self._end_dial(address)
        for address in [a for a, until in self._backoff.items() if until <= now]:
            del self._backoff[address]

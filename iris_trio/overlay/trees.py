"""Scribe-like trees over the overlay, sans-IO.

One tree per cluster or topic id, rooted at the live node numerically closest
to the id. A node joins by routing a :class:`TreeJoin` towards the id: every
node on the way adopts the previous hop as a child and, unless it was in the
tree already, makes the next hop its parent and lets the join travel on; the
node where it is delivered is the root. Children send heartbeats to their
parent; a parent whose connection drops is replaced by joining again; a root
that is no longer the closest node joins the true root; a node with no member
interest and no children prunes itself from its parent, so leaving removes
the tree completely. Tree links are pinned in the overlay so they stay up.

:class:`TreeNode` wraps an :class:`~iris_trio.overlay.node.OverlayNode`: feed
it the inputs, and drain effects from :meth:`TreeNode.take_effects`, which
handles tree traffic itself and passes everything else through.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

from ..errors import ProtocolError
from ..wire.frames import Frame, FrameCodec
from .frames import Route
from .ids import from_bytes, short, to_bytes
from .node import Deliver, Effect, Lost, OverlayNode
from .sequences import PublisherStreams, Released
from .tree_frames import (
    MAX_EVENTS,
    NodeMessage,
    TreeAck,
    TreeAnycast,
    TreeBounce,
    TreeHeartbeat,
    TreeJoin,
    TreePrune,
    TreePublish,
    TreeSlow,
)

__all__ = [
    "EMPTY",
    "LOST",
    "NONE_TAKES_IT",
    "NO_MEMBER",
    "RETRY",
    "AnycastDelivery",
    "BounceDelivery",
    "Handover",
    "MessageDelivery",
    "TreeConfig",
    "TreeDelivery",
    "TreeNode",
    "TreeState",
    "serves_bit",
    "tree_problems",
]

#: Why a TreeBounce came back: nobody in the tree takes that kind, or the tree
#: is changing where it went (send it again).
#: LOST: a node on its way went away before passing it on for sure: it may
#: have reached a member, so it must not be sent again.
EMPTY, RETRY, LOST = 0, 1, 2
#: The details of an EMPTY bounce: the tree has no member, or none takes the kind.
NO_MEMBER, NONE_TAKES_IT = "no member", "none takes it"


def serves_bit(kind: int) -> int:
    """The bit of :attr:`TreeHeartbeat.serves` for anycasts of ``kind``."""
    return 1 << kind


@dataclasses.dataclass(frozen=True, slots=True)
class AnycastDelivery:
    """An anycast this node (a member of its tree that takes ``kind``) should
    handle: ``payload`` from ``origin``, which accepts links at ``address``."""

    tree: int
    kind: int
    origin: int
    address: str
    tag: bytes
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class BounceDelivery:
    """One of this node's anycasts came back: ``reason`` EMPTY (nobody takes it;
    ``detail`` says why) or RETRY."""

    tag: bytes
    reason: int
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class MessageDelivery:
    """A frame sent to this node with :meth:`TreeNode.send_to` arrived routed (or
    from this node itself); frames sent over a link arrive on the link."""

    frame: Frame


@dataclasses.dataclass(frozen=True, slots=True)
class Handover:
    """A routed message reached this node, which does not know its target (the
    target joined a moment ago): dial ``address`` and send ``message`` there."""

    target: int
    address: str
    message: NodeMessage


@dataclasses.dataclass(frozen=True, slots=True)
class TreeDelivery:
    """Events published on a tree this node is a member of (one publisher's, in
    order; ``sequence`` is the first one's). ``missed``: events of this
    publisher now known to have been missed here (lost on the way, e.g. behind
    a partition), counted once."""

    tree: int
    publisher: int
    sequence: int
    events: tuple[bytes, ...]
    missed: int = 0


#: What :meth:`TreeNode.take_effects` returns.
TreeEffect = Effect | TreeDelivery | AnycastDelivery | BounceDelivery | MessageDelivery | Handover
_Delivery = TreeDelivery | AnycastDelivery | BounceDelivery | MessageDelivery | Handover


@dataclasses.dataclass(frozen=True, slots=True)
class TreeConfig:
    """Tree timing (seconds).

    Attributes:
        heartbeat_interval: a child tells its parent it is alive this often.
        child_timeout: a child not heard from for this long is dropped.
        join_retry: a join not answered by a parent in this time is sent again.
        report_interval: a changed capacity is reported to the parent at most
            this often (besides the heartbeats).
        settle_time: for this long after its leaf set changed, a root with no
            member below it answers "retry" rather than "no responders" (the
            tree may be moving to it).
        handover_window: events routed to a node that is not (yet) in their
            tree are held this long, and a node that has just become a tree's
            root keeps what it passes on for this long and sends it to every
            child that joins meanwhile: the old root and its subtree get what
            was published while the tree moved (duplicates are dropped).
        handover_frames / handover_bytes: the most event frames (and bytes) held
            or kept per tree for that; handover_total_bytes: the most held for
            trees this node is not in yet, over all trees.
        scan_interval: every tree's timers (heartbeats, silent children, its
            place) are checked this often; between, a tick touches only the
            trees with a deferred capacity report, so that a node in thousands
            of trees does no work per tree on each frame or short tick.
    """

    heartbeat_interval: float = 1.0
    child_timeout: float = 4.0
    join_retry: float = 2.0
    report_interval: float = 0.02
    settle_time: float = 0.5
    handover_window: float = 1.0
    scan_interval: float = 0.25
    handover_frames: int = 256
    handover_bytes: int = 4 * 1024 * 1024
    handover_total_bytes: int = 32 * 1024 * 1024


@dataclasses.dataclass(slots=True)
class TreeState:
    """One tree as this node sees it."""

    member: bool = False
    parent: int | None = None
    root: bool = False
    #: True once linked to the root (this node is the root, or its parent said so).
    linked: bool = False
    #: The kinds of request of this node's subtree the root knows of, as the
    #: parent last said (see :class:`TreeAck`; the root knows all its own).
    confirmed: int = 0
    children: dict[int, float] = dataclasses.field(default_factory=dict)
    join_sent_at: float | None = None
    heartbeat_due: float = 0.0
    #: Requests this node can take now as a member (set by the layer above).
    spare: int = 0
    #: The kinds of request this node's member takes (bits of serves_bit()).
    serves: int = 0
    #: Spare capacity each child last reported for its subtree.
    child_spare: dict[int, int] = dataclasses.field(default_factory=dict)
    #: The kinds of request each child's subtree takes (absent: not reported yet).
    child_serves: dict[int, int] = dataclasses.field(default_factory=dict)
    #: When a child last joined or said its subtree takes other kinds of request.
    serves_changed_at: float = -math.inf
    #: Requests sent to each child, and how many it said it had received.
    sent: dict[int, int] = dataclasses.field(default_factory=dict)
    acknowledged: dict[int, int] = dataclasses.field(default_factory=dict)
    #: Requests kept for our own member, not yet handed to it.
    kept: int = 0
    #: Our member's spare as dispatch sees it: refreshed no more often than a
    #: child reports, so that our own member and the children are weighed alike.
    own_view: int = 0
    own_view_at: float = -math.inf
    own_since: int = 0  # requests kept for our member since ``own_view``
    own_view_pending: bool = False
    #: Requests received from the parent (reported back to it).
    received: int = 0
    reported_spare: int | None = None
    reported_received: int = 0
    reported_serves: int = 0
    reported_at: float = -1.0
    report_pending: bool = False
    #: Event frames passed on since this node became the root (see
    #: ``TreeConfig.handover_window``), and until when they are kept.
    replay: list[TreePublish] | None = None
    replay_bytes: int = 0
    replay_until: float = -math.inf

    def child_score(self, child: int) -> int:
        """A child's spare capacity less what is on the way to it."""
        in_transit = max(0, self.sent.get(child, 0) - self.acknowledged.get(child, 0))
        return self.child_spare.get(child, 0) - in_transit

    def subtree_spare(self) -> int:
        """Spare capacity of this node's subtree, as it knows it."""
        own = self.spare - self.kept if self.member else 0
        return max(0, own) + sum(max(0, self.child_score(child)) for child in self.children)

    def subtree_serves(self) -> int:
        """The kinds of request some member of this node's subtree takes."""
        serves = self.serves if self.member else 0
        for child_serves in self.child_serves.values():
            serves |= child_serves
        return serves

    def known_serves(self, child: int) -> int:
        """What the root knows ``child``'s subtree takes (as far as this node can tell)."""
        serves = self.child_serves.get(child, 0)
        return serves if self.root else serves & self.confirmed

    @property
    def attached(self) -> bool:
        """True when this node has a parent or is the root."""
        return self.root or self.parent is not None

    @property
    def needed(self) -> bool:
        """True while a member or a child depends on this node's place in the tree."""
        return self.member or bool(self.children)


class TreeNode:
    """Trees over one overlay node (see the module docstring)."""

    def __init__(self, overlay: OverlayNode, config: TreeConfig | None = None) -> None:
        self.overlay = overlay
        self.config = config or TreeConfig()
        self.trees: dict[int, TreeState] = {}
        self._codec = FrameCodec()
        self._now = 0.0
        self._sequences: dict[int, int] = {}  # tree -> our last published sequence
        #: This node's epoch as a publisher (see TreePublish).
        self.epoch = int.from_bytes(os.urandom(4), "big")
        # What each publisher's events passed on here were: duplicates and late
        # (reordered) events are dropped, so each publisher's events stay in order.
        self._streams: PublisherStreams[tuple[TreePublish, int | None]] = PublisherStreams()
        self._release_due = math.inf  # when held events are due to go on
        # tree -> (since, frames, bytes): events routed here for a tree this node
        # is not in yet (it may be becoming the root; see handover_window).
        self._held: dict[int, tuple[float, list[TreePublish], int]] = {}
        self._held_bytes = 0  # over all trees (at most handover_total_bytes)
        # Work of tick(): all trees at most every scan_interval, and between
        # scans only the trees with a deferred report; the overlay's pinned
        # links are recomputed then too (it reads them only when it ticks).
        self._next_scan = -math.inf
        self._due: set[int] = set()
        self._pins_stale = False
        #: tree -> until when this node, as a publisher, should publish nothing
        #: more on it (a branch asked it to slow down; see TreeSlow).
        self.paused_until: dict[int, float] = {}
        self._deliveries: list[_Delivery] = []
        #: Events dropped as duplicates or out of order, and with no tree to go to.
        self._report_due = math.inf  # the earliest deferred capacity report
        self.events_duplicate = 0
        self.events_orphaned = 0
        #: Routed messages for this node that could not be decoded.
        self.messages_dropped = 0
        overlay.forward_hook = self._forwarding
        overlay.at_most_once = self._is_anycast

    # ----------------------------------------------------------------- inputs

    def join(self, now: float, tree: int) -> None:
        """Become a member of ``tree`` (subscribe, or join a cluster)."""
        self._now = now
        state = self.trees.setdefault(tree, TreeState())
        state.member = True
        if not state.attached and state.join_sent_at is None:
            self._send_join(tree, state)
        self._pin()

    def leave(self, now: float, tree: int) -> None:
        """Stop being a member of ``tree``; the branch prunes itself if unused."""
        self._now = now
        state = self.trees.get(tree)
        if state is not None:
            state.member = False
            self._prune_if_unneeded(tree, state)
        self._pin()

    def publish(self, now: float, tree: int, events: Sequence[bytes]) -> int:
        """Send ``events`` (one or more, at most MAX_EVENTS, in order) to every member
        of ``tree`` in one frame; returns the first one's sequence number."""
        if not 0 < len(events) <= MAX_EVENTS:
            raise ValueError(f"a tree frame carries 1 to {MAX_EVENTS} events, not {len(events)}")
        self._now = now
        sequence = self._sequences.get(tree, 0) + 1
        self._sequences[tree] = sequence + len(events) - 1
        frame = TreePublish(
            to_bytes(tree), to_bytes(self.overlay.id), self.epoch, sequence, tuple(events)
        )
        state = self.trees.get(tree)
        if state is not None and state.root and self.overlay.next_hop(tree) is None:
            self._disseminate(frame, came_from=None)  # we are the root: straight down
        else:
            self.overlay.route(now, tree, self._codec.encode(frame))
        return sequence

    def received(self, now: float, node: int, frame: Frame) -> None:
        """A frame from peer ``node``: the overlay sees every frame (any frame proves
        the peer alive), tree frames are handled here."""
        self._now = now
        self.overlay.received(now, node, frame)
        if isinstance(frame, TreePublish):
            self._disseminate(frame, came_from=node)
        elif isinstance(frame, TreeAnycast):
            tree = from_bytes(frame.tree)
            state = self.trees.get(tree)
            if state is not None and state.parent == node:
                state.received += 1
            self._dispatch(frame, from_parent=True)
            if state is not None and tree in self.trees:
                self._report_change(tree, state)
        elif isinstance(frame, TreeHeartbeat):
            self._child_alive(from_bytes(frame.tree), node, now, frame)
        elif isinstance(frame, TreeBounce):
            self._deliveries.append(BounceDelivery(frame.tag, frame.reason, frame.detail))
        elif isinstance(frame, NodeMessage):  # handed over to us over a new link
            self._message_arrived(frame)
        elif isinstance(frame, TreeSlow):
            self._slow(frame)
        elif isinstance(frame, TreeAck):
            tree = from_bytes(frame.tree)
            state = self.trees.get(tree)
            if (
                state is not None
                and state.parent == node
                and (not state.linked or state.confirmed != frame.serves)
            ):
                state.confirmed = frame.serves
                self._set_linked(tree, state)
        elif isinstance(frame, TreePrune):
            tree = from_bytes(frame.tree)
            state = self.trees.get(tree)
            if state is not None and node in state.children:
                self._forget_child(state, node)
                self._prune_if_unneeded(tree, state)
                self._pin()

    def tick(self, now: float) -> None:
        """Timers of the overlay and of every tree."""
        self._now = now
        self._report_due = math.inf
        if self._pins_stale:
            self._recompute_pins()
        self.overlay.tick(now)
        config = self.config
        if now >= self._release_due:
            self._release_due = math.inf
            for tree, released in self._streams.release(now):
                held_state = self.trees.get(tree)
                if held_state is not None:
                    self._pass_on(tree, held_state, released)
            self._release_due = self._streams.next_release
        for tree, (since, frames, _) in list(self._held.items()):
            if now - since > config.handover_window:
                del self._held[tree]  # nobody joined: the tree has no members
                self._held_bytes -= sum(_size(frame) for frame in frames)
                self.events_orphaned += sum(len(frame.events) for frame in frames)
        if now >= self._next_scan:
            self._next_scan = now + config.scan_interval
            due = list(self.trees.items())
        else:
            due = [(tree, self.trees[tree]) for tree in self._due if tree in self.trees]
        self._due = set()
        for tree, state in due:
            if state.replay is not None and now >= state.replay_until:
                state.replay, state.replay_bytes = None, 0
            for child, heard in list(state.children.items()):
                if now - heard > config.child_timeout or not self.overlay.is_connected(child):
                    self._forget_child(state, child)
            if not self._check_place(tree, state):
                continue
            if now >= state.heartbeat_due or (
                state.report_pending and now >= state.reported_at + config.report_interval
            ):
                self._report(tree, state)
            elif state.report_pending:
                self._defer(tree, state.reported_at + config.report_interval)
            if state.own_view_pending:
                view_due = state.own_view_at + config.report_interval
                if now >= view_due:
                    self._refresh_own_view(state)
                else:
                    self._defer(tree, view_due)
        self._pin()

    def _defer(self, tree: int, due: float) -> None:
        """Tick again by ``due`` for ``tree`` (a deferred report)."""
        self._due.add(tree)
        self._report_due = min(self._report_due, due)

    def topology_changed(self, now: float) -> None:
        """A peer connected or went away: trees whose root moved or whose parent
        left find their place again now rather than at the next tick."""
        self._now = now
        for tree, state in list(self.trees.items()):
            self._check_place(tree, state)
        self._pin()

    def _check_place(self, tree: int, state: TreeState) -> bool:
        """Leave a dead parent or a root that is no longer the closest node, and
        join again if needed; prune unneeded state. False if the tree is gone."""
        if state.parent is not None and not self.overlay.is_connected(state.parent):
            state.parent = None  # the parent died: find another, now
            state.linked = False
            state.join_sent_at = None
        if state.root and self.overlay.next_hop(tree) is not None:
            state.root = False  # someone closer appeared: join the true root, now
            state.linked = False
            state.join_sent_at = None
        if not state.needed:
            self._prune_if_unneeded(tree, state)
            return False
        if not state.attached and (
            state.join_sent_at is None or self._now - state.join_sent_at > self.config.join_retry
        ):
            self._send_join(tree, state)
        return True

    def set_spare(self, now: float, tree: int, spare: int, serves: int | None = None) -> None:
        """Tell the tree how many more requests this member can take now (and,
        if given, which kinds of request it takes: bits of :func:`serves_bit`)."""
        self._now = now
        state = self.trees.get(tree)
        if state is not None:
            state.spare = spare
            if serves is not None:
                # A kind taken anew is not known at the root until it says so
                # (it may remember an earlier "no": serving stopped, then started).
                state.confirmed &= ~(serves & ~state.serves)
                state.serves = serves
            due = state.own_view_at + self.config.report_interval
            if now >= due:
                self._refresh_own_view(state)
            else:
                state.own_view_pending = True
                self._defer(tree, due)
            self._report_change(tree, state)

    def _refresh_own_view(self, state: TreeState) -> None:
        state.own_view = state.spare - state.kept
        state.own_view_at = self._now
        state.own_since = 0
        state.own_view_pending = False

    def _report(self, tree: int, state: TreeState) -> None:
        """Tell the parent we are alive and what our subtree can take."""
        state.heartbeat_due = self._now + self.config.heartbeat_interval
        if state.parent is not None:
            spare = max(0, min(state.subtree_spare(), 2**32 - 1))
            serves = state.subtree_serves()
            state.reported_spare = spare
            state.reported_received = state.received
            state.reported_serves = serves
            state.reported_at = self._now
            state.report_pending = False
            frame = TreeHeartbeat(to_bytes(tree), spare, state.received, serves)
            self.overlay.send_direct(self._now, state.parent, frame)

    def _report_change(self, tree: int, state: TreeState) -> None:
        """Report a changed capacity or count now, or, if the last report was
        less than ``report_interval`` ago, once that much time has passed."""
        if state.parent is None or (
            max(0, state.subtree_spare()) == state.reported_spare
            and state.received == state.reported_received
            and state.subtree_serves() == state.reported_serves
        ):
            return
        due = state.reported_at + self.config.report_interval
        if self._now >= due or state.subtree_serves() != state.reported_serves:
            self._report(tree, state)  # (what the subtree takes changes rarely: at once)
        else:
            state.report_pending = True
            self._defer(tree, due)

    @property
    def report_due(self) -> float:
        """When the earliest deferred capacity report, or held events, are due
        (inf: none is)."""
        return min(self._report_due, self._release_due)

    def next_deadline(self) -> float:
        """When :meth:`tick` should run next at the latest."""
        return min(self.overlay.next_deadline(), self._report_due, self._release_due)

    def anycast(self, now: float, tree: int, kind: int, tag: bytes, payload: bytes) -> None:
        """Send ``payload`` to one member of ``tree`` that takes ``kind``, chosen by
        spare capacity (see :class:`TreeAnycast`); if nobody takes it, a
        :class:`BounceDelivery` with ``tag`` comes back."""
        self._now = now
        origin = to_bytes(self.overlay.id)
        frame = TreeAnycast(to_bytes(tree), origin, self.overlay.address, kind, tag, payload)
        self.overlay.route(now, tree, self._codec.encode(frame))

    def send_to(self, now: float, node: int, address: str, frame: Frame) -> None:
        """Send ``frame`` to ``node``: over the link to it if there is one (it is
        then in the kernel at once, with no hop to acknowledge), else routed to
        its id inside a :class:`NodeMessage` (``address`` lets a node that does
        not know it yet hand it over)."""
        self._now = now
        if node == self.overlay.id:
            self._deliver_to_self(frame)
        elif not self.overlay.send_direct(now, node, frame):
            message = NodeMessage(to_bytes(node), address, self._codec.encode(frame))
            self.overlay.route(now, node, self._codec.encode(message))

    def _slow(self, frame: TreeSlow) -> None:
        tree = from_bytes(frame.tree)
        until = self._now + min(frame.pause_ms, 1000) / 1000
        if until > self.paused_until.get(tree, -math.inf):
            self.paused_until[tree] = until
        if len(self.paused_until) > 1024:  # forget the pauses that are over
            now = self._now
            self.paused_until = {t: u for t, u in self.paused_until.items() if u > now}

    def _deliver_to_self(self, frame: Frame) -> None:
        if isinstance(frame, TreeSlow):
            self._slow(frame)
            return
        if isinstance(frame, TreeBounce):
            self._deliveries.append(BounceDelivery(frame.tag, frame.reason, frame.detail))
        else:
            self._deliveries.append(MessageDelivery(frame))

    def _message_arrived(self, message: NodeMessage) -> None:
        """A NodeMessage for this node: the frame inside goes up (a malformed one
        is dropped: it came through the overlay, not from the link's peer)."""
        try:
            frame = self._codec.decode(message.frame)
        except ProtocolError:
            self.messages_dropped += 1
            return
        self._deliver_to_self(frame)

    def take_effects(self) -> list[TreeEffect]:
        """The overlay's effects, with tree traffic handled here, then the events
        delivered to this node as a member."""
        if not self.overlay.has_effects and not self._deliveries:
            return []
        passed: list[TreeEffect] = []
        while True:
            effects = self.overlay.take_effects()
            if not effects:
                break
            for effect in effects:
                if isinstance(effect, Deliver) and self._delivered(effect):
                    continue
                if isinstance(effect, Lost):
                    self._lost(effect)
                    continue
                passed.append(effect)
        for delivery in self._deliveries:
            if isinstance(delivery, AnycastDelivery):
                state = self.trees.get(delivery.tree)
                if state is not None and state.kept > 0:
                    state.kept -= 1  # the member's own spare counts it from now on
        passed.extend(self._deliveries)
        self._deliveries.clear()
        return passed

    # -------------------------------------------------------------- internals

    def _tree_frame(self, route: Route) -> Frame | None:
        try:
            frame = self._codec.decode(route.payload)
        except ProtocolError:
            return None
        routed = (TreeJoin, TreePublish, TreeAnycast, NodeMessage)
        return frame if isinstance(frame, routed) else None

    def _is_anycast(self, route: Route) -> bool:
        """Anycasts reach at most one member: never sent a second way."""
        return self._codec.kind_of(route.payload) == TreeAnycast.KIND

    def _lost(self, effect: Lost) -> None:
        """An anycast lost its next hop unacknowledged: tell its origin (it may
        have reached a member; the origin must not send it again)."""
        frame = self._tree_frame(effect.route)
        if isinstance(frame, TreeAnycast):
            self._bounce(frame, LOST, "a node on the way to the member went away")

    def _join_frame(self, route: Route) -> TreeJoin | None:
        if self._codec.kind_of(route.payload) != TreeJoin.KIND:  # most are not: no decoding
            return None
        frame = self._tree_frame(route)
        return frame if isinstance(frame, TreeJoin) else None

    def _disseminate(self, frame: TreePublish, *, came_from: int | None) -> None:
        """Pass events along the tree: ``came_from`` is the tree neighbour they came
        from, None when they were routed here (we are, or are becoming, the root)."""
        tree, publisher = from_bytes(frame.tree), from_bytes(frame.publisher)
        state = self.trees.get(tree)
        if state is None:
            if came_from is None:
                self._hold(tree, frame)  # until the tree's members join us
            return
        if came_from is None and not state.attached:
            self._open_replay(state)  # the tree is moving to us
        if came_from is not None and came_from != state.parent and came_from not in state.children:
            self.events_orphaned += len(frame.events)  # not a tree link (any more)
            return
        released = self._streams.accept(
            self._now,
            tree,
            publisher,
            frame.epoch,
            frame.sequence,
            len(frame.events),
            (frame, came_from),
        )
        if released is None:
            self.events_duplicate += len(frame.events)
            return
        self._pass_on(tree, state, released)
        # (A frame after a gap is held a moment, waiting for what fills it.)
        self._release_due = min(self._release_due, self._streams.next_release)

    def _pass_on(
        self, tree: int, state: TreeState, released: Released[tuple[TreePublish, int | None]]
    ) -> None:
        """Send events on along the tree, and up to this node's member."""
        now = self._now
        missed = released.missed
        for frame, came_from in released.frames:
            for child in state.children:
                if child != came_from:
                    self.overlay.send_direct(now, child, frame)
            if state.parent is not None and state.parent != came_from:
                self.overlay.send_direct(now, state.parent, frame)
            if state.replay is not None and self._fits(state.replay, state.replay_bytes, frame):
                state.replay.append(frame)
                state.replay_bytes += _size(frame)
            if state.member:
                publisher = from_bytes(frame.publisher)
                self._deliveries.append(
                    TreeDelivery(tree, publisher, frame.sequence, frame.events, missed)
                )
            missed = 0

    def _fits(self, frames: list[TreePublish], size: int, frame: TreePublish) -> bool:
        config = self.config
        return len(frames) < config.handover_frames and size + _size(frame) <= config.handover_bytes

    def _hold(self, tree: int, frame: TreePublish) -> None:
        since, frames, size = self._held.get(tree, (self._now, [], 0))
        total = self._held_bytes + _size(frame)
        if self._fits(frames, size, frame) and total <= self.config.handover_total_bytes:
            frames.append(frame)
            self._held[tree] = (since, frames, size + _size(frame))
            self._held_bytes = total
        else:
            self.events_orphaned += len(frame.events)

    def _open_replay(self, state: TreeState) -> None:
        if state.replay is None:
            state.replay, state.replay_bytes = [], 0
            state.replay_until = self._now + self.config.handover_window

    def _adopt(self, state: TreeState, child: int) -> None:
        """``child`` joined through us: while we have just become the root, it
        gets what was passed on since (it drops what it has)."""
        new = child not in state.children
        state.children[child] = self._now
        state.serves_changed_at = self._now  # it may take requests: it will say
        if new and state.replay and self._now < state.replay_until:
            for frame in state.replay:
                self.overlay.send_direct(self._now, child, frame)

    def _send_join(self, tree: int, state: TreeState) -> None:
        state.join_sent_at = self._now
        payload = self._codec.encode(TreeJoin(to_bytes(tree)))
        self.overlay.route(self._now, tree, payload)

    def _forwarding(self, route: Route, previous: int | None, next_hop: int) -> bool:
        join = self._join_frame(route)
        if join is None:
            return True
        tree = from_bytes(join.tree)
        state = self.trees.setdefault(tree, TreeState())
        if previous is None:  # our own join sets off towards the root
            state.root = False
            state.linked = False
            state.parent = next_hop
            self._pin()
            return True
        self._adopt(state, previous)
        if state.attached:
            if state.linked:
                ack = TreeAck(join.tree, state.known_serves(previous))
                self.overlay.send_direct(self._now, previous, ack)
            self._pin()
            return False  # already in the tree: the join stops here
        state.linked = False
        state.parent = next_hop
        state.join_sent_at = self._now
        self._pin()
        return True

    def _delivered(self, effect: Deliver) -> bool:
        frame = self._tree_frame(effect.route)
        if frame is None:
            return False
        if isinstance(frame, TreePublish):  # we are the root: send it down
            self._disseminate(frame, came_from=None)
            return True
        if isinstance(frame, TreeAnycast):  # we are the root: pick a subtree
            self._dispatch(frame)
            return True
        if isinstance(frame, NodeMessage):
            target = from_bytes(frame.target)
            if target == self.overlay.id:
                self._message_arrived(frame)
            elif frame.address:  # we do not know the target yet: hand it over
                self._deliveries.append(Handover(target, frame.address, frame))
            return True
        assert isinstance(frame, TreeJoin)
        join = frame
        tree = from_bytes(join.tree)
        state = self.trees.setdefault(tree, TreeState())
        if not state.root:  # the tree moves to us: keep what we pass on a while
            self._open_replay(state)
        state.root = True
        state.parent = None
        state.join_sent_at = None
        if effect.previous is not None:
            self._adopt(state, effect.previous)
        self._set_linked(tree, state)
        _, held, held_size = self._held.pop(tree, (0.0, [], 0))
        self._held_bytes -= held_size
        for frame in held:  # published while the tree was on its way to us
            self._disseminate(frame, came_from=None)
        self._pin()
        return True

    def _dispatch(self, anycast: TreeAnycast, *, from_parent: bool = False) -> None:
        """Hand an anycast to this member or to a child subtree that takes its
        kind, by spare capacity.

        With nobody to hand it to, the root bounces it EMPTY; a node below it
        (whose branch emptied while it was on its way), or a root that has not
        joined the overlay yet, whose leaf set changed in the last
        ``settle_time``, or whose children just changed, bounces it RETRY, and
        the origin sends it again to what the tree is now.
        """
        now = self._now
        overlay = self.overlay
        # Below the root, or at a root that may have just become one (its leaf
        # set changed a moment ago, and the members' branches are still moving
        # to it), nobody here means "try again", not "nobody in the tree".
        settling = now - overlay.leaves_changed_at < self.config.settle_time
        nobody = RETRY if from_parent or settling or not overlay.check_ready(now) else EMPTY
        tree = from_bytes(anycast.tree)
        state = self.trees.get(tree)
        if state is None or not state.needed:
            self._bounce(anycast, nobody, NO_MEMBER)
            return
        bit = serves_bit(anycast.kind)
        candidates: dict[int | None, int] = {}
        if state.member and state.serves & bit:
            candidates[None] = state.own_view - state.own_since
        for child in state.children:
            serves = state.child_serves.get(child)
            if serves is None or serves & bit:  # not reported yet: it may take it
                candidates[child] = state.child_score(child)
        while candidates:
            chosen = self._pick(candidates)
            if chosen is None:
                state.kept += 1  # until the member has it (see take_effects)
                state.own_since += 1
                self._deliveries.append(
                    AnycastDelivery(
                        tree,
                        anycast.kind,
                        from_bytes(anycast.origin),
                        anycast.address,
                        anycast.tag,
                        anycast.payload,
                    )
                )
                return
            if overlay.send_direct(now, chosen, anycast):
                state.sent[chosen] = state.sent.get(chosen, 0) + 1
                return
            # That child's link is gone: forget it, try another.
            self._forget_child(state, chosen)
            del candidates[chosen]
        # The tree has members, but none takes this kind (if one just joined or
        # changed, its word may be on the way: retry then).
        if now - state.serves_changed_at < self.config.settle_time:
            nobody = RETRY
        self._bounce(anycast, nobody, NONE_TAKES_IT)

    def _bounce(self, anycast: TreeAnycast, reason: int, detail: str) -> None:
        bounce = TreeBounce(anycast.tag, reason, detail)
        self.send_to(self._now, from_bytes(anycast.origin), anycast.address, bounce)

    def _pick(self, candidates: dict[int | None, int]) -> int | None:
        """A target at random, weighted by spare capacity, so equal members share
        alike and a busier one gets less; when all are full, the least full."""
        rng = self.overlay.rng
        weights = [max(0, spare) for spare in candidates.values()]
        if any(weights):
            return rng.choices(list(candidates), weights)[0]
        best = max(candidates.values())
        return rng.choice([target for target, spare in candidates.items() if spare == best])

    @staticmethod
    def _forget_child(state: TreeState, child: int) -> None:
        state.children.pop(child, None)
        state.child_spare.pop(child, None)
        state.child_serves.pop(child, None)
        state.sent.pop(child, None)
        state.acknowledged.pop(child, None)

    def _set_linked(self, tree: int, state: TreeState) -> None:
        """This node is linked to the root now (or knows what the root knows of
        its subtree better): so are its children; tell them."""
        state.linked = True
        for child in state.children:
            ack = TreeAck(to_bytes(tree), state.known_serves(child))
            self.overlay.send_direct(self._now, child, ack)

    def is_linked(self, tree: int, serves: int = 0) -> bool:
        """True when this node is linked to the root of ``tree`` (see
        :class:`TreeAck`) and the root knows its member takes the kinds of
        request in ``serves`` (bits of :func:`serves_bit`)."""
        state = self.trees.get(tree)
        if state is None or not state.linked:
            return False
        known = state.serves if state.root else state.serves & state.confirmed
        return known & serves == serves

    def _child_alive(self, tree: int, child: int, now: float, frame: TreeHeartbeat) -> None:
        received = frame.received
        state = self.trees.setdefault(tree, TreeState())
        state.children[child] = now
        state.child_spare[child] = frame.spare
        if state.child_serves.get(child) != frame.serves:
            state.child_serves[child] = frame.serves
            state.serves_changed_at = now
        if received > state.sent.get(child, 0):  # the child kept count longer than we did
            state.sent[child] = received
        state.acknowledged[child] = received
        self._report_change(tree, state)
        if state.linked:  # repeated, so a lost acknowledgement heals itself
            self.overlay.send_direct(now, child, TreeAck(to_bytes(tree), state.known_serves(child)))
        if not state.attached and state.join_sent_at is None:
            self._send_join(tree, state)  # e.g. this node restarted and lost its place
        self._pin()

    def _prune_if_unneeded(self, tree: int, state: TreeState) -> None:
        if state.needed:
            return
        if state.parent is not None:
            self.overlay.send_direct(self._now, state.parent, TreePrune(to_bytes(tree)))
        del self.trees[tree]
        self._streams.forget_tree(tree)

    def _pin(self) -> None:
        self._pins_stale = True  # recomputed when next needed (see tick)

    def _recompute_pins(self) -> None:
        self._pins_stale = False
        pinned: set[int] = set()
        for state in self.trees.values():
            pinned.update(state.children)
            if state.parent is not None:
                pinned.add(state.parent)
        self.overlay.pinned = pinned


def _size(frame: TreePublish) -> int:
    return sum(len(event) for event in frame.events) + 64


def tree_problems(states: dict[int, TreeState], members: set[int], closest: int) -> list[str]:
    """Everything wrong with one tree, given every live node's state for it.

    A right tree has exactly one root, the live node ``closest`` to the tree's
    id; parent and child links that agree at both ends; every member linked to
    the root without cycles, and every node knowing it is linked; and no state
    on nodes with neither members nor children (none at all once ``members`` is
    empty).
    """
    if not members:
        return [f"{short(node)} keeps tree state" for node in states]
    problems: list[str] = []
    roots = [node for node, state in states.items() if state.root]
    if roots != [closest]:
        problems.append(f"roots {[short(r) for r in roots]}, expected {short(closest)} only")
    for node, state in states.items():
        if state.parent is not None:
            parent = states.get(state.parent)
            if parent is None or node not in parent.children:
                problems.append(f"{short(node)}: parent {short(state.parent)} disowns it")
        for child in state.children:
            if child not in states or states[child].parent != node:
                problems.append(f"{short(node)}: child {short(child)} has another parent")
        if not state.needed:
            problems.append(f"{short(node)}: useless tree state")
        if not state.linked:
            problems.append(f"{short(node)}: does not know it is linked to the root")
    for member in members:
        seen: set[int] = set()
        cursor: int | None = member
        while cursor is not None and cursor in states and not states[cursor].root:
            if cursor in seen:
                problems.append(f"{short(member)}: cycle")
                break
            seen.add(cursor)
            cursor = states[cursor].parent
        if cursor is None or cursor not in states:
            problems.append(f"{short(member)}: not linked to the root")
    return problems

"""A deterministic simulator of many overlay nodes: virtual time, seeded faults,
and an oracle that knows the true live set.

Nodes are sans-IO :class:`~iris_trio.overlay.node.OverlayNode` instances; the
simulator plays their driver: it opens and closes connections, carries frames
with latency, and applies the fault plan (loss, duplication, delay and hence
reordering, partitions, crashes, silent freezes, restarts and stalls). Given
the same seed, a run replays exactly. ``check()`` lists every oracle violation:
each live node's leaf set must be exactly its nearest live neighbours (within
its partition), and no routing-table entry may be dead, unreachable or in a
slot its id does not belong to.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

from ..overlay.config import OverlayConfig
from ..overlay.frames import Route
from ..overlay.ids import RING, digit, ring_distance, shared_prefix, short
from ..overlay.node import Connect, Deliver, Disconnect, OverlayNode, Send
from ..overlay.trees import TreeConfig, TreeDelivery, TreeNode, tree_problems
from ..wire.frames import Frame

__all__ = ["Delivery", "FaultPlan", "LookupResult", "SimNode", "Simulation"]


@dataclasses.dataclass(frozen=True, slots=True)
class FaultPlan:
    """Per-message faults and latencies (seconds).

    Attributes:
        loss: probability a frame is dropped.
        duplicate: probability a frame is delivered twice.
        latency: (min, max) one-way delay, uniform; a spread reorders frames.
        connect_timeout: how long a dial to an unreachable address takes to fail.
        in_order: frames on one connection arrive in the order they were sent
            (as over TCP), whatever their latencies; by default a spread of
            latencies reorders them.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    latency: tuple[float, float] = (0.001, 0.005)
    connect_timeout: float = 3.0
    in_order: bool = False


@dataclasses.dataclass(slots=True)
class SimNode:
    """A simulated process hosting one overlay node."""

    id: int
    address: str
    overlay: OverlayNode
    alive: bool = True
    frozen: bool = False
    group: int = 0
    stalled_until: float = 0.0
    incarnation: int = 0
    started_at: float = 0.0
    trees: TreeNode | None = None
    acks_at: float = math.inf  # when a flush of owed acknowledgements is scheduled


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a lookup: where, when, after how many hops, and whether the
    oracle agreed at that moment."""

    node: int
    time: float
    hops: int
    correct: bool


@dataclasses.dataclass(slots=True)
class LookupResult:
    """What became of one routed lookup."""

    origin: int
    key: int
    sent_at: float
    deliveries: list[Delivery] = dataclasses.field(default_factory=list)


class Simulation:
    """Many overlay nodes in one process under virtual time.

    Args:
        seed: the seed of every random choice; printed by failing tests.
        config: the overlay configuration of every node.
        faults: per-message faults.
        beacon_interval: how often each node's discovery beacon is heard by
            ``beacon_fanout`` random nodes of its partition (None: no discovery).
    """

    def __init__(
        self,
        seed: int,
        *,
        config: OverlayConfig | None = None,
        faults: FaultPlan | None = None,
        beacon_interval: float | None = 2.0,
        beacon_fanout: int = 2,
        trees: TreeConfig | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config or OverlayConfig()
        self.faults = faults or FaultPlan()
        self.beacon_interval = beacon_interval
        self.tree_config = trees
        self.beacon_fanout = beacon_fanout
        self.now = 0.0
        self.nodes: dict[int, SimNode] = {}
        self._by_address: dict[str, int] = {}
        self._connections: set[tuple[int, int]] = set()
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        self.lookups: dict[bytes, LookupResult] = {}
        #: Seconds after its start before a node counts as joined for the oracle.
        self.join_settle = 1.0
        self.frames_sent = 0
        self.frames_dropped = 0
        self._last_arrival: dict[tuple[int, int], float] = {}
        #: Events delivered to tree members: (member's id, delivery), in order.
        self.tree_deliveries: list[tuple[int, TreeDelivery]] = []

    # --------------------------------------------------------------- scheduling

    def _at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (when, self._sequence, action, args))

    def _latency(self) -> float:
        low, high = self.faults.latency
        return self.rng.uniform(low, high)

    def run_until(self, when: float) -> None:
        """Process every event up to virtual time ``when``."""
        queue = self._queue
        while queue and queue[0][0] <= when:
            self.now, _, action, args = heapq.heappop(queue)
            action(*args)
        self.now = max(self.now, when)

    def run_for(self, duration: float) -> None:
        """Advance virtual time by ``duration``."""
        self.run_until(self.now + duration)

    def run_until_converged(self, limit: float, *, step: float = 1.0) -> float | None:
        """Run until :meth:`check` finds nothing; return the time taken, or None."""
        start = self.now
        while self.now - start < limit:
            self.run_for(step)
            if not self.check():
                return self.now - start
        return None

    # ------------------------------------------------------------------- nodes

    def spawn(self, *, seeds: int = 1, node_id: int | None = None) -> int:
        """Start a node that joins through ``seeds`` random live nodes; returns its id."""
        node_id = self.rng.getrandbits(128) if node_id is None else node_id
        address = f"sim-{len(self._by_address)}:{node_id % 65536}"
        self._by_address[address] = node_id
        sim = SimNode(node_id, address, self._new_overlay(node_id, address))
        self._install_trees(sim)
        self.nodes[node_id] = sim
        self._boot(sim, seeds)
        return node_id

    def _new_overlay(self, node_id: int, address: str) -> OverlayNode:
        return OverlayNode(
            node_id, address, config=self.config, rng=random.Random(self.rng.getrandbits(64))
        )

    def _install_trees(self, sim: SimNode) -> None:
        if self.tree_config is not None:
            sim.trees = TreeNode(sim.overlay, self.tree_config)

    def _boot(self, sim: SimNode, seeds: int) -> None:
        sim.started_at = self.now
        candidates = [
            n.address for n in self.live_nodes() if n.id != sim.id and n.group == sim.group
        ]
        chosen = self.rng.sample(candidates, min(seeds, len(candidates)))
        incarnation = sim.incarnation
        self._at(self.now, self._call, sim, incarnation, "start", chosen)
        self._schedule_tick(sim, incarnation, first=True)
        if self.beacon_interval is not None:
            self._at(
                self.now + self.rng.uniform(0, self.beacon_interval), self._beacon, sim, incarnation
            )

    def _schedule_tick(self, sim: SimNode, incarnation: int, *, first: bool = False) -> None:
        interval = self.config.tick_interval
        delay = self.rng.uniform(0, interval) if first else interval
        self._at(self.now + delay, self._tick, sim, incarnation)

    def _tick(self, sim: SimNode, incarnation: int) -> None:
        if sim.incarnation != incarnation or not sim.alive:
            return
        self._call(sim, incarnation, "tick")
        self._schedule_tick(sim, incarnation)

    def _beacon(self, sim: SimNode, incarnation: int) -> None:
        if sim.incarnation != incarnation or not sim.alive:
            return
        if not sim.frozen:
            hearers = [n for n in self.live_nodes() if n.id != sim.id and n.group == sim.group]
            for hearer in self.rng.sample(hearers, min(self.beacon_fanout, len(hearers))):
                self._at(
                    self.now + self._latency(),
                    self._call,
                    hearer,
                    hearer.incarnation,
                    "discovered",
                    sim.id,
                    sim.address,
                )
        assert self.beacon_interval is not None
        self._at(self.now + self.beacon_interval, self._beacon, sim, incarnation)

    def live_nodes(self) -> list[SimNode]:
        """Nodes whose process runs and responds (not crashed, not frozen)."""
        return [n for n in self.nodes.values() if n.alive and not n.frozen]

    def _call(self, sim: SimNode, incarnation: int, method: str, *args: Any) -> None:
        if sim.incarnation != incarnation or not sim.alive or sim.frozen:
            return
        if self.now < sim.stalled_until:  # the process is paused: run it later
            self._at(sim.stalled_until, self._call, sim, incarnation, method, *args)
            return
        if sim.trees is not None and method in ("received", "tick"):
            getattr(sim.trees, method)(self.now, *args)
        else:
            getattr(sim.overlay, method)(self.now, *args)
        self._apply(sim, self._effects(sim))
        due = sim.overlay.ack_due
        if due < sim.acks_at:  # owed acknowledgements go out on time, between ticks
            sim.acks_at = due
            self._at(due, self._flush_acks, sim, incarnation)

    def _flush_acks(self, sim: SimNode, incarnation: int) -> None:
        sim.acks_at = math.inf
        if sim.overlay.ack_due <= self.now:
            self._call(sim, incarnation, "flush_acks")

    def _effects(self, sim: SimNode) -> list[object]:
        if sim.trees is not None:
            return list(sim.trees.take_effects())
        return list(sim.overlay.take_effects())

    # ----------------------------------------------------------------- effects

    def _apply(self, sim: SimNode, effects: Iterable[object]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(sim, effect.node, effect.frame)
            elif isinstance(effect, Connect):
                self._dial(sim, effect.address)
            elif isinstance(effect, Disconnect):
                self._close(sim.id, effect.node)
            elif isinstance(effect, Deliver):
                self._delivered(sim, effect.route)
            elif isinstance(effect, TreeDelivery):
                self.tree_deliveries.append((sim.id, effect))

    def _pair(self, a: int, b: int) -> tuple[int, int]:
        return (a, b) if a < b else (b, a)

    def _reachable(self, a: SimNode, b: SimNode) -> bool:
        return b.alive and not b.frozen and a.group == b.group

    def _send(self, sim: SimNode, target_id: int, frame: Frame) -> None:
        if self._pair(sim.id, target_id) not in self._connections:
            return
        target = self.nodes[target_id]
        self.frames_sent += 1
        if not self._reachable(sim, target) or self.rng.random() < self.faults.loss:
            self.frames_dropped += 1
            return
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            arrival = self.now + self._latency()
            if self.faults.in_order:
                arrival = max(arrival, self._last_arrival.get((sim.id, target_id), 0.0))
                self._last_arrival[sim.id, target_id] = arrival
            self._at(arrival, self._receive, sim.id, target, target.incarnation, frame)

    def _receive(self, source: int, target: SimNode, incarnation: int, frame: Frame) -> None:
        if self._pair(source, target.id) in self._connections:
            self._call(target, incarnation, "received", source, frame)

    def _dial(self, sim: SimNode, address: str) -> None:
        target_id = self._by_address.get(address)
        target = self.nodes.get(target_id) if target_id is not None else None
        incarnation = sim.incarnation
        if target is None or not target.alive or not self._reachable(sim, target):
            # Nothing listens there: refused after a round trip; unreachable: timeout.
            refused = target is None or not target.alive
            delay = 2 * self._latency() if refused else self.faults.connect_timeout
            self._at(self.now + delay, self._call, sim, incarnation, "connect_failed", address)
            return
        self._at(
            self.now + 3 * self._latency(),
            self._establish,
            sim,
            incarnation,
            target,
            target.incarnation,
            address,
        )

    def _establish(
        self, sim: SimNode, incarnation: int, target: SimNode, target_incarnation: int, address: str
    ) -> None:
        if sim.incarnation != incarnation or target.incarnation != target_incarnation:
            return
        if not (sim.alive and not sim.frozen and self._reachable(sim, target)):
            self._call(sim, incarnation, "connect_failed", address)
            return
        pair = self._pair(sim.id, target.id)
        if pair not in self._connections:
            self._connections.add(pair)
            self._call(target, target_incarnation, "connected", sim.id, sim.address)
        self._call(sim, incarnation, "connected", target.id, target.address)

    def _close(self, closer: int, other: int) -> None:
        pair = self._pair(closer, other)
        if pair not in self._connections:
            return
        self._connections.discard(pair)
        target = self.nodes[other]
        if target.alive and not target.frozen and target.group == self.nodes[closer].group:
            self._at(
                self.now + self._latency(),
                self._call,
                target,
                target.incarnation,
                "disconnected",
                closer,
            )

    def _delivered(self, sim: SimNode, route: Route) -> None:
        result = self.lookups.get(route.message_id)
        if result is not None:
            correct = sim.id == self.expected_owner(result.key, sim)
            result.deliveries.append(Delivery(sim.id, self.now, route.hops, correct))

    def expected_owner(self, key: int, receiver: SimNode | None = None) -> int:
        """The node a delivery of ``key`` should reach now: the closest live node of
        the receiver's partition among those that finished joining (up for
        ``join_settle`` seconds), or the receiver itself if it is closer still."""
        group = receiver.group if receiver is not None else 0
        horizon = self.now - self.join_settle
        candidates = [
            n.id
            for n in self.live_nodes()
            if n.group == group and (n.started_at <= horizon or n is receiver)
        ]
        return min(candidates, key=lambda n: (ring_distance(n, key), n))

    # ------------------------------------------------------------------ faults

    def crash(self, node_id: int) -> None:
        """Kill a node's process: its connections close, peers notice at once."""
        sim = self.nodes[node_id]
        sim.alive = False
        for pair in [p for p in self._connections if node_id in p]:
            self._connections.discard(pair)
            other = self.nodes[pair[0] if pair[1] == node_id else pair[1]]
            if other.alive and other.group == sim.group:
                self._at(
                    self.now + self._latency(),
                    self._call,
                    other,
                    other.incarnation,
                    "disconnected",
                    node_id,
                )

    def freeze(self, node_id: int) -> None:
        """Silent failure: the process stops answering but no connection closes."""
        self.nodes[node_id].frozen = True

    def restart(self, node_id: int, *, seeds: int = 1) -> None:
        """Start a crashed or frozen node again, same id and address, fresh state."""
        sim = self.nodes[node_id]
        if sim.frozen:
            self.crash(node_id)
        sim.alive, sim.frozen = True, False
        sim.incarnation += 1
        sim.overlay = self._new_overlay(sim.id, sim.address)
        self._install_trees(sim)
        self._boot(sim, seeds)

    def stall(self, node_id: int, duration: float) -> None:
        """Pause a node's event loop for ``duration`` (a busy process, not a dead one)."""
        self.nodes[node_id].stalled_until = self.now + duration

    def partition(self, groups: list[Iterable[int]]) -> None:
        """Split the network: nodes talk only within their group (cut cables, silent)."""
        for index, group in enumerate(groups):
            for node_id in group:
                self.nodes[node_id].group = index

    def heal(self) -> None:
        """Undo any partition."""
        for sim in self.nodes.values():
            sim.group = 0

    def leave(self, node_id: int) -> None:
        """Graceful leave."""
        sim = self.nodes[node_id]
        self._call(sim, sim.incarnation, "leave")
        sim.alive = False

    # ------------------------------------------------------------------ lookups

    def lookup(self, origin: int, key: int) -> bytes:
        """Route an empty message from ``origin`` towards ``key``; track its delivery."""
        sim = self.nodes[origin]
        message_id = sim.overlay.route(self.now, key, b"")
        self.lookups[message_id] = LookupResult(origin, key, self.now)
        self._apply(sim, self._effects(sim))
        return message_id

    def join_tree(self, node_id: int, tree: int) -> None:
        """Make ``node_id`` a member of ``tree`` (needs ``trees=`` at construction)."""
        sim = self.nodes[node_id]
        assert sim.trees is not None, "construct the Simulation with trees=TreeConfig()"
        sim.trees.join(self.now, tree)
        self._apply(sim, self._effects(sim))

    def publish(self, node_id: int, tree: int, events: list[bytes]) -> None:
        """Publish ``events`` on ``tree`` from ``node_id`` (see ``tree_deliveries``)."""
        sim = self.nodes[node_id]
        assert sim.trees is not None, "construct the Simulation with trees=TreeConfig()"
        sim.trees.publish(self.now, tree, events)
        self._apply(sim, self._effects(sim))

    def leave_tree(self, node_id: int, tree: int) -> None:
        """Stop ``node_id``'s membership of ``tree``."""
        sim = self.nodes[node_id]
        assert sim.trees is not None
        sim.trees.leave(self.now, tree)
        self._apply(sim, self._effects(sim))

    def tree_problems(self, tree: int, members: set[int]) -> list[str]:
        """The tree oracle (see :func:`~iris_trio.overlay.trees.tree_problems`)."""
        states = {
            n.id: n.trees.trees[tree]
            for n in self.live_nodes()
            if n.trees is not None and tree in n.trees.trees
        }
        return tree_problems(states, members, self.closest_live(tree))

    def closest_live(self, key: int, group: int = 0) -> int:
        """The oracle's answer: the live node of ``group`` closest to ``key``."""
        return min(
            (n.id for n in self.live_nodes() if n.group == group),
            key=lambda n: (ring_distance(n, key), n),
        )

    # ------------------------------------------------------------------- oracle

    def expected_leaves(self, node_id: int) -> tuple[list[int], list[int]]:
        """The true (right, left) neighbours of a live node within its partition."""
        sim = self.nodes[node_id]
        others = sorted(n.id for n in self.live_nodes() if n.group == sim.group and n.id != node_id)
        size = self.config.leaf_size
        right = sorted(others, key=lambda n: (n - node_id) % RING)[:size]
        left = sorted(others, key=lambda n: (node_id - n) % RING)[:size]
        return right, left

    def check(self) -> list[str]:
        """Every oracle violation among live nodes (empty when consistent)."""
        problems: list[str] = []
        live = {n.id: n for n in self.live_nodes()}
        for sim in live.values():
            overlay = sim.overlay
            right, left = self.expected_leaves(sim.id)
            if overlay.leaves.right != right or overlay.leaves.left != left:
                problems.append(f"{short(sim.id)}: leaf set differs from its true neighbours")
            for row_index, row in enumerate(overlay.table.rows):
                for column, entry in enumerate(row):
                    if entry is None:
                        continue
                    if entry not in live or live[entry].group != sim.group:
                        problems.append(f"{short(sim.id)}: dead entry {short(entry)}")
                    elif (
                        shared_prefix(sim.id, entry) != row_index
                        or digit(entry, row_index) != column
                    ):
                        problems.append(f"{short(sim.id)}: {short(entry)} in the wrong slot")
        return problems

    def describe(self) -> str:
        """A line for failure messages (the seed replays the run)."""
        return (
            f"seed={self.seed} t={self.now:.1f}s nodes={len(self.live_nodes())} "
            f"frames={self.frames_sent} dropped={self.frames_dropped}"
        )

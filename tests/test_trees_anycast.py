"""The trees' capacity-weighted anycast in the deterministic simulator.

Members report their spare capacity as a node's responder does (it drops as a
request arrives and comes back when it is done); origins send anycasts and
send again on a RETRY bounce, as a requester does. Every run replays exactly
from its seed.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable, Collection
from typing import Any

import pytest

from iris_trio.overlay.config import OverlayConfig
from iris_trio.overlay.ids import name_id
from iris_trio.overlay.trees import (
    EMPTY,
    NO_MEMBER,
    NONE_TAKES_IT,
    RETRY,
    AnycastDelivery,
    BounceDelivery,
    TreeConfig,
    serves_bit,
)
from iris_trio.patterns.membership import REQUEST, TUNNEL
from iris_trio.testing.simulator import SimNode, Simulation

from .test_trees import settle as settle_trees

TREE = name_id("cluster", "calc")


class AnycastSimulation(Simulation):
    """The simulator, plus what these tests need of it: send anycasts, set a
    member's spare capacity, and hear what each node is handed.

    Nodes tick every 20 ms, the trees' report interval, as a driver brings its
    tick forward when a capacity report is due.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed, config=OverlayConfig(tick_interval=0.02), trees=TreeConfig())
        #: Called (at the moment of delivery) with the node and what it was handed.
        self.on_anycast: Callable[[int, AnycastDelivery], None] = lambda node, delivery: None
        self.on_bounce: Callable[[int, BounceDelivery], None] = lambda node, delivery: None

    def _effects(self, sim: SimNode) -> list[object]:
        effects = super()._effects(sim)
        for effect in effects:  # handled as the next event, as a driver would
            if isinstance(effect, AnycastDelivery):
                self.after(0.0, self.on_anycast, sim.id, effect)
            elif isinstance(effect, BounceDelivery):
                self.after(0.0, self.on_bounce, sim.id, effect)
        return effects

    def after(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` ``delay`` seconds from now (virtual)."""
        self._at(self.now + delay, action, *args)

    def anycast(self, origin: int, tree: int, kind: int, tag: bytes) -> None:
        """Send an anycast of ``kind`` from ``origin`` to one member of ``tree``."""
        sim = self.nodes[origin]
        if sim.alive and sim.trees is not None:
            sim.trees.anycast(self.now, tree, kind, tag, b"payload " + tag)
            self._apply(sim, self._effects(sim))

    def set_spare(self, node: int, tree: int, spare: int, serves: int | None = None) -> None:
        """Tell ``tree`` how many more anycasts ``node``'s member takes now."""
        sim = self.nodes[node]
        if sim.alive and sim.trees is not None:
            sim.trees.set_spare(self.now, tree, spare, serves)
            self._apply(sim, self._effects(sim))


def network(nodes: int, seed: int) -> AnycastSimulation:
    sim = AnycastSimulation(seed)
    for _ in range(nodes):
        sim.spawn()
        sim.run_for(0.05)
    assert sim.run_until_converged(60) is not None, sim.describe()
    return sim


def settle(sim: Simulation, members: set[int]) -> None:
    """Run until the tree is right for ``members``, then until every capacity and
    kind is reported and the trees' settle time has passed."""
    settle_trees(sim, {TREE: members})
    sim.run_for(2.0)


@dataclasses.dataclass
class Load:
    """Members that take requests and origins that send them, in the simulation.

    Each member takes ``capacity`` requests at once and works ``service`` seconds
    on each; each origin sends again, after ``backoff``, what bounced RETRY.
    """

    sim: AnycastSimulation
    capacity: dict[int, int]
    service: float = 0.1
    backoff: float = 0.05
    #: Who handled each request (tag), in order.
    handled: dict[bytes, list[int]] = dataclasses.field(default_factory=dict)
    #: When each member handled a request.
    times: dict[int, list[float]] = dataclasses.field(default_factory=dict)
    busy: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    bounces: collections.Counter[tuple[int, str]] = dataclasses.field(
        default_factory=collections.Counter
    )
    failed: list[bytes] = dataclasses.field(default_factory=list)
    origins: dict[bytes, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sim.on_anycast = self._arrived
        self.sim.on_bounce = self._bounced
        for member, capacity in self.capacity.items():
            self.sim.join_tree(member, TREE)
            self.sim.set_spare(member, TREE, capacity, serves_bit(REQUEST))

    def send(self, origin: int, count: int, *, start: float, rate: float, seed: int) -> None:
        """Schedule ``count`` requests from ``origin`` from ``start`` seconds on, at
        ``rate`` a second on average (exponential gaps)."""
        rng = random.Random(seed)
        when = start
        for number in range(count):
            tag = b"%x.%d" % (origin % 65536, number)
            self.origins[tag] = origin
            self.sim.after(when - self.sim.now, self.sim.anycast, origin, TREE, REQUEST, tag)
            when += rng.expovariate(rate)

    def leave(self, member: int) -> None:
        """``member`` leaves the cluster: it takes no more (what it has, it finishes)."""
        del self.capacity[member]
        self.sim.leave_tree(member, TREE)

    def _arrived(self, node: int, delivery: AnycastDelivery) -> None:
        assert delivery.payload == b"payload " + delivery.tag
        self.handled.setdefault(delivery.tag, []).append(node)
        self.times.setdefault(node, []).append(self.sim.now)
        self.busy[node] += 1
        self._report(node)
        self.sim.after(self.service, self._done, node)

    def _done(self, node: int) -> None:
        self.busy[node] -= 1
        self._report(node)

    def _report(self, node: int) -> None:
        if node in self.capacity:
            self.sim.set_spare(node, TREE, max(0, self.capacity[node] - self.busy[node]))

    def _bounced(self, node: int, bounce: BounceDelivery) -> None:
        assert self.origins[bounce.tag] == node  # back to its origin
        self.bounces[bounce.reason, bounce.detail] += 1
        if bounce.reason == RETRY:
            self.sim.after(self.backoff, self.sim.anycast, node, TREE, REQUEST, bounce.tag)
        else:
            self.failed.append(bounce.tag)

    def shares(self) -> collections.Counter[int]:
        """Requests handled per member."""
        return collections.Counter(node for nodes in self.handled.values() for node in nodes)

    def assert_each_handled_once(self) -> None:
        assert self.failed == [], (self.bounces, self.sim.describe())
        assert set(self.handled) == set(self.origins), self.sim.describe()  # none lost
        twice = {tag: nodes for tag, nodes in self.handled.items() if len(nodes) > 1}
        assert twice == {}, self.sim.describe()


def pick(sim: Simulation, count: int, seed: int, *, avoid: Collection[int] = ()) -> list[int]:
    ids = sorted(n.id for n in sim.live_nodes() if n.id not in avoid)
    return random.Random(seed).sample(ids, count)


# ------------------------------------------------------------ load shares


@pytest.mark.parametrize("seed", [61, 62, 63])
def test_members_with_equal_spare_capacity_share_the_load_alike(seed: int) -> None:
    sim = network(12, seed)
    members = pick(sim, 4, seed)
    load = Load(sim, dict.fromkeys(members, 4))
    settle(sim, set(members))
    origins = pick(sim, 3, seed + 1, avoid=set(members))
    for index, origin in enumerate(origins):  # 90 a second in all: about half the capacity
        load.send(origin, 300, start=sim.now, rate=30, seed=seed * 10 + index)
    sim.run_for(20)
    load.assert_each_handled_once()
    shares = load.shares()
    fair = 900 / len(members)
    assert set(shares) == set(members)
    for member in members:
        assert abs(shares[member] - fair) <= 0.15 * fair, (shares, sim.describe())


@pytest.mark.parametrize("seed", [71, 72, 73])
def test_members_get_shares_in_proportion_to_their_spare_capacity(seed: int) -> None:
    sim = network(12, seed)
    members = pick(sim, 3, seed)
    capacity = dict(zip(members, [8, 4, 2], strict=True))
    load = Load(sim, dict(capacity))
    settle(sim, set(members))
    origins = pick(sim, 3, seed + 1, avoid=set(members))
    for index, origin in enumerate(origins):  # 70 a second in all: half the capacity
        load.send(origin, 300, start=sim.now, rate=70 / 3, seed=seed * 10 + index)
    sim.run_for(30)
    load.assert_each_handled_once()
    shares = load.shares()
    total = sum(capacity.values())
    for member, spare in capacity.items():
        expected = 900 * spare / total
        assert abs(shares[member] - expected) <= 0.2 * expected, (shares, sim.describe())
    big, middle, small = members
    assert shares[big] > shares[middle] > shares[small]


# ------------------------------------------------------- a member leaving


@pytest.mark.parametrize("seed", [81, 82, 83])
def test_a_member_that_leaves_gets_nothing_more_and_the_others_take_its_share(seed: int) -> None:
    sim = network(12, seed)
    members = pick(sim, 4, seed)
    load = Load(sim, dict.fromkeys(members, 4))
    settle(sim, set(members))
    origins = pick(sim, 3, seed + 1, avoid=set(members))
    start = sim.now
    for index, origin in enumerate(origins):
        load.send(origin, 300, start=start, rate=30, seed=seed * 10 + index)
    leaver = members[seed % len(members)]
    sim.run_for(5)  # half the requests are out...
    left_at = sim.now
    load.leave(leaver)  # ...when a member leaves the cluster
    sim.run_for(20)
    load.assert_each_handled_once()
    assert load.times[leaver], "it had its share before it left"
    # Nothing reached it once it had left: what was on its way bounced and went
    # to the others.
    assert max(load.times[leaver]) <= left_at
    after = collections.Counter(
        node for node, times in load.times.items() for t in times if t > left_at
    )
    stayed = [m for m in members if m != leaver]
    assert set(after) == set(stayed)
    assert after.total() > 350
    fair = after.total() / len(stayed)
    for member in stayed:
        assert abs(after[member] - fair) <= 0.15 * fair, (after, sim.describe())


# ------------------------------------------------------------------ bounces


def test_an_anycast_to_a_tree_without_a_member_bounces_empty_no_member() -> None:
    sim = network(10, 91)
    bounces: list[tuple[int, BounceDelivery]] = []
    sim.on_bounce = lambda node, bounce: bounces.append((node, bounce))
    sim.on_anycast = lambda node, delivery: pytest.fail("nobody should be handed it")
    sim.run_for(2)  # the leaf sets are settled: the root knows it is the root
    origin = pick(sim, 1, 91)[0]
    sim.anycast(origin, TREE, REQUEST, b"hello?")
    sim.run_for(2)
    assert [(node, b.tag, b.reason, b.detail) for node, b in bounces] == [
        (origin, b"hello?", EMPTY, NO_MEMBER)
    ]


def test_a_tree_whose_members_take_no_requests_bounces_empty_none_takes_it() -> None:
    sim = network(10, 92)
    members = pick(sim, 3, 92)
    for member in members:  # they take tunnels, not requests
        sim.join_tree(member, TREE)
        sim.set_spare(member, TREE, 4, serves_bit(TUNNEL))
    settle(sim, set(members))
    bounces: list[tuple[int, BounceDelivery]] = []
    handed: list[tuple[int, AnycastDelivery]] = []
    sim.on_bounce = lambda node, bounce: bounces.append((node, bounce))
    sim.on_anycast = lambda node, delivery: handed.append((node, delivery))
    origin = pick(sim, 1, 93, avoid=set(members))[0]
    sim.anycast(origin, TREE, REQUEST, b"request")
    sim.run_for(2)
    assert handed == []
    assert [(node, b.tag, b.reason, b.detail) for node, b in bounces] == [
        (origin, b"request", EMPTY, NONE_TAKES_IT)
    ]
    # A tunnel opening, which they do take, reaches one of them.
    sim.anycast(origin, TREE, TUNNEL, b"tunnel")
    sim.run_for(2)
    assert len(bounces) == 1
    assert [(d.tag, d.kind, d.origin) for _, d in handed] == [(b"tunnel", TUNNEL, origin)]
    assert handed[0][0] in members


def test_an_anycast_down_a_branch_that_emptied_bounces_retry_then_empty() -> None:
    sim = network(12, 94)
    root = sim.closest_live(TREE)
    member = pick(sim, 1, 94, avoid={root})[0]
    sim.join_tree(member, TREE)
    sim.set_spare(member, TREE, 4, serves_bit(REQUEST))
    settle(sim, {member})
    bounces: list[tuple[int, BounceDelivery]] = []
    sim.on_bounce = lambda node, bounce: bounces.append((node, bounce))
    sim.on_anycast = lambda node, delivery: pytest.fail("the member had left")
    # The only member leaves; at that very moment the root, which has not heard
    # of it yet, sends an anycast down its branch.
    sim.leave_tree(member, TREE)
    sim.anycast(root, TREE, REQUEST, b"first")
    sim.run_for(2)
    assert [(node, b.tag, b.reason) for node, b in bounces] == [(root, b"first", RETRY)]
    # Sent again once the branch is gone, it finds an empty tree.
    settle(sim, set())
    sim.anycast(root, TREE, REQUEST, b"first")
    sim.run_for(2)
    assert [(b.tag, b.reason, b.detail) for _, b in bounces[1:]] == [(b"first", EMPTY, NO_MEMBER)]

"""Scribe-like trees in the simulator, checked against the tree oracle."""

from __future__ import annotations

import random

from iris_trio.overlay.config import OverlayConfig
from iris_trio.overlay.ids import name_id
from iris_trio.overlay.trees import TreeConfig
from iris_trio.testing.simulator import FaultPlan, Simulation


def network(nodes: int, seed: int, faults: FaultPlan | None = None) -> Simulation:
    sim = Simulation(seed, config=OverlayConfig(), trees=TreeConfig(), faults=faults)
    for _ in range(nodes):
        sim.spawn()
        sim.run_for(0.05)
    assert sim.run_until_converged(60) is not None, sim.describe()
    return sim


def settle(sim: Simulation, trees: dict[int, set[int]], within: float = 30.0) -> None:
    waited = 0.0
    while any(sim.tree_problems(t, m) for t, m in trees.items()):
        assert waited < within, (
            {hex(t)[:10]: sim.tree_problems(t, m)[:3] for t, m in trees.items()},
            sim.describe(),
        )
        sim.run_for(0.5)
        waited += 0.5


def test_members_build_one_tree_per_name_rooted_at_the_closest_node() -> None:
    sim = network(16, 51)
    rng = random.Random(51)
    ids = [n.id for n in sim.live_nodes()]
    topics = {
        name_id("topic", "news"): set(rng.sample(ids, 10)),
        name_id("cluster", "echo"): set(rng.sample(ids, 5)),
    }
    for tree, members in topics.items():
        for member in members:
            sim.join_tree(member, tree)
    settle(sim, topics)


def test_killing_a_quarter_including_the_root_repairs_every_tree() -> None:
    sim = network(16, 52)
    rng = random.Random(52)
    tree = name_id("topic", "news")
    members = {n.id for n in sim.live_nodes()}
    for member in members:
        sim.join_tree(member, tree)
    settle(sim, {tree: members})
    root = sim.closest_live(tree)
    victims = {root, *rng.sample(sorted(members - {root}), 3)}
    for victim in victims:
        sim.crash(victim)
    settle(sim, {tree: members - victims})
    assert sim.closest_live(tree) != root


def test_a_new_closer_node_becomes_the_only_root() -> None:
    sim = network(12, 53)
    tree = name_id("topic", "moving-root")
    members = {n.id for n in sim.live_nodes()}
    for member in members:
        sim.join_tree(member, tree)
    settle(sim, {tree: members})
    newcomer = sim.spawn(node_id=tree + 1)  # now the closest node to the tree's id
    sim.run_for(2)
    settle(sim, {tree: members})
    assert sim.closest_live(tree) == newcomer


def test_leaving_removes_all_tree_state() -> None:
    sim = network(16, 54)
    rng = random.Random(54)
    tree = name_id("topic", "news")
    members = set(rng.sample([n.id for n in sim.live_nodes()], 8))
    for member in members:
        sim.join_tree(member, tree)
    settle(sim, {tree: members})
    for member in sorted(members):
        sim.leave_tree(member, tree)
    settle(sim, {tree: set()})
    pinned = [n.overlay.pinned for n in sim.live_nodes() if n.overlay.pinned]
    assert pinned == [], sim.describe()


def test_deep_trees_in_a_larger_network_survive_failures() -> None:
    sim = network(200, 55)
    rng = random.Random(55)
    tree = name_id("topic", "wide")
    members = set(rng.sample([n.id for n in sim.live_nodes()], 60))
    for member in members:
        sim.join_tree(member, tree)
    settle(sim, {tree: members})
    interior = [
        n.id
        for n in sim.live_nodes()
        if n.trees and tree in n.trees.trees and not n.trees.trees[tree].member
    ]
    assert interior, "a 200-node network routes joins through non-member nodes"
    victims = {sim.closest_live(tree), *rng.sample(sorted(n.id for n in sim.live_nodes()), 49)}
    for victim in victims:
        sim.crash(victim)
    settle(sim, {tree: members - victims}, within=60)


def _run_publishing(
    sim: Simulation, publisher: int, tree: int, duration: float, sent: list[bytes]
) -> None:
    """Publish one event every 10 ms for ``duration`` seconds."""
    steps = round(duration / 0.01)
    for _ in range(steps):
        event = b"%06d" % len(sent)
        sent.append(event)
        sim.publish(publisher, tree, [event])
        sim.run_for(0.01)


def _received(sim: Simulation, member: int, tree: int) -> list[bytes]:
    return [
        event
        for node, delivery in sim.tree_deliveries
        if node == member and delivery.tree == tree
        for event in delivery.events
    ]


def test_a_tree_moving_to_a_joining_root_and_back_loses_no_event() -> None:
    for seed in (61, 62, 63):
        sim = network(10, seed, FaultPlan(in_order=True))  # links are TCP: in order
        tree = name_id("topic", "moving-events")
        nodes = sorted(n.id for n in sim.live_nodes())
        members = set(nodes[::3])
        publisher = next(node for node in nodes if node not in members)
        for member in members:
            sim.join_tree(member, tree)
        settle(sim, {tree: members})
        sent: list[bytes] = []
        for move in range(5):
            _run_publishing(sim, publisher, tree, 0.5, sent)
            newcomer = sim.spawn(node_id=tree + 1 + move)  # the closest node now
            _run_publishing(sim, publisher, tree, 2.0, sent)
            assert sim.closest_live(tree) == newcomer
            sim.leave(newcomer)
        _run_publishing(sim, publisher, tree, 2.0, sent)
        sim.run_for(2)
        for member in sorted(members):
            received = _received(sim, member, tree)
            missing = len(set(sent) - set(received))
            assert received == sent, f"seed {seed}: {missing} of {len(sent)} lost at {member:x}"
            missed = sum(d.missed for n, d in sim.tree_deliveries if n == member)
            assert missed == 0

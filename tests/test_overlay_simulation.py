"""The overlay in the deterministic simulator, checked against the oracle.

Every assertion message carries the simulation's seed (``sim.describe()``):
re-running with that seed replays the run exactly.
"""

from __future__ import annotations

import math
import random
import statistics

import pytest

from iris_trio.overlay.config import OverlayConfig
from iris_trio.testing.simulator import FaultPlan, Simulation


def build(
    nodes: int,
    seed: int,
    *,
    heartbeat: float = 1.0,
    spacing: float = 0.02,
    faults: FaultPlan | None = None,
    converge_within: float = 120.0,
) -> Simulation:
    """A converged network of ``nodes`` nodes, joined one after another."""
    config = OverlayConfig(
        heartbeat_interval=heartbeat,
        suspect_after=2.5 * heartbeat,
        dead_after=4 * heartbeat,
        exchange_interval=5 * heartbeat,
        tick_interval=heartbeat / 2,
    )
    sim = Simulation(seed, config=config, faults=faults, beacon_interval=2 * heartbeat)
    for _ in range(nodes):
        sim.spawn()
        sim.run_for(spacing)
    took = sim.run_until_converged(converge_within)
    assert took is not None, f"no convergence: {sim.check()[:5]} ({sim.describe()})"
    return sim


def lookups(sim: Simulation, count: int, rng: random.Random) -> list[bytes]:
    live = [n.id for n in sim.live_nodes()]
    return [sim.lookup(rng.choice(live), rng.getrandbits(128)) for _ in range(count)]


def score(sim: Simulation, message_ids: list[bytes]) -> tuple[int, int, int, float]:
    """(correct, wrong, lost, mean hops).

    Correct: delivered exactly once, to the node the oracle expected at that
    moment. Wrong: some delivery reached another node. Duplicates that reached
    the right node each time count as neither (see ``duplicates``).
    """
    correct = wrong = lost = 0
    hops = []
    for message_id in message_ids:
        result = sim.lookups[message_id]
        if not result.deliveries:
            lost += 1
            continue
        hops.append(result.deliveries[0].hops)
        if not all(delivery.correct for delivery in result.deliveries):
            wrong += 1
        elif len(result.deliveries) == 1:
            correct += 1
    return correct, wrong, lost, sum(hops) / max(len(hops), 1)


def duplicates(sim: Simulation, message_ids: list[bytes]) -> int:
    """Lookups delivered more than once."""
    return sum(1 for m in message_ids if len(sim.lookups[m].deliveries) > 1)


@pytest.mark.parametrize(
    ("nodes", "seed"), [(256, 11), pytest.param(1000, 12, marks=pytest.mark.slow)]
)
def test_every_key_reaches_the_closest_node_in_few_hops(nodes: int, seed: int) -> None:
    sim = build(nodes, seed, heartbeat=1.0 if nodes < 500 else 3.0)
    sent = lookups(sim, 10_000, random.Random(seed))
    sim.run_for(5)
    correct, wrong, lost, mean_hops = score(sim, sent)
    assert (correct, wrong, lost) == (10_000, 0, 0), sim.describe()
    assert mean_hops < math.ceil(math.log(nodes, 16)), (mean_hops, sim.describe())
    assert sim.check() == [], sim.describe()


def _kill_set(sim: Simulation, count: int, rng: random.Random, leaf_size: int) -> list[int]:
    """``count`` random nodes, never half a leaf set of ring-adjacent ones."""
    ring = sorted(n.id for n in sim.live_nodes())
    dead: set[int] = set()
    positions = list(range(len(ring)))
    rng.shuffle(positions)
    for position in positions:
        if len(dead) == count:
            break
        run = 1
        for step in (-1, 1):  # the run of adjacent dead nodes this one would join
            cursor = position + step
            while ring[cursor % len(ring)] in dead:
                run += 1
                cursor += step
        if run < leaf_size // 2:
            dead.add(ring[position])
    assert len(dead) == count
    return sorted(dead)


def test_killing_a_fifth_of_500_nodes_is_repaired() -> None:
    sim = build(500, 21, heartbeat=2.0)
    rng = random.Random(21)
    for node in _kill_set(sim, 100, rng, sim.config.leaf_size):
        sim.crash(node)
    during = []
    for _ in range(20):  # lookups while the repair runs
        during += lookups(sim, 50, rng)
        sim.run_for(0.1)
    sim.run_for(10)
    correct, _, _, _ = score(sim, during)
    assert correct >= 0.99 * len(during), (correct, len(during), sim.describe())
    took = sim.run_until_converged(60)
    assert took is not None, (sim.check()[:5], sim.describe())
    after = lookups(sim, 5_000, rng)
    sim.run_for(5)
    assert score(sim, after)[0] == 5_000, sim.describe()


@pytest.mark.parametrize(("loss", "seed"), [(0.01, 31), (0.05, 32)])
def test_churn_with_message_loss(loss: float, seed: int) -> None:
    sim = build(150, seed, faults=FaultPlan(loss=loss, latency=(0.001, 0.02)))
    rng = random.Random(seed)
    sent: list[bytes] = []
    for second in range(60):
        if second % 2 == 0:
            sim.spawn()
        else:
            victim = rng.choice([n.id for n in sim.live_nodes()])
            sim.crash(victim)
        for _ in range(10):
            sent += lookups(sim, 5, rng)
            sim.run_for(0.1)
    sim.run_for(10)
    _, wrong, lost, _ = score(sim, sent)
    assert lost <= 0.01 * len(sent), (lost, len(sent), sim.describe())
    assert wrong <= 0.001 * len(sent), (wrong, len(sent), sim.describe())
    assert duplicates(sim, sent) <= 0.001 * len(sent), sim.describe()


def test_crashed_nodes_are_removed_everywhere_at_once() -> None:
    sim = build(64, 41)
    victim = sim.live_nodes()[10].id
    sim.crash(victim)
    sim.run_for(0.2)
    holders = [n for n in sim.live_nodes() if n.overlay.is_connected(victim)]
    assert holders == [], sim.describe()
    assert sim.run_until_converged(10, step=0.5) is not None, sim.describe()


def test_silent_failures_are_removed_within_the_bound() -> None:
    sim = build(64, 42)
    victim = sim.live_nodes()[20].id
    sim.freeze(victim)
    bound = sim.config.dead_after + sim.config.heartbeat_interval
    sim.run_for(sim.config.dead_after - 0.5)
    assert any(n.overlay.is_connected(victim) for n in sim.live_nodes()), "removed too early"
    sim.run_for(bound - sim.config.dead_after + 0.5)
    assert not any(n.overlay.is_connected(victim) for n in sim.live_nodes()), sim.describe()
    assert sim.run_until_converged(10, step=0.5) is not None, sim.describe()


def test_a_stalling_node_is_never_declared_dead() -> None:
    sim = build(16, 43)
    staller = sim.live_nodes()[3].id
    for _ in range(300):  # 10 virtual minutes: 400 ms stall every 2 s
        sim.stall(staller, 0.4)
        sim.run_for(2.0)
    declared = sum(n.overlay.statistics().peers_declared_dead for n in sim.live_nodes())
    assert declared == 0, sim.describe()
    assert sim.check() == [], sim.describe()


def test_partition_and_heal() -> None:
    sim = build(64, 44)
    ids = sorted(n.id for n in sim.live_nodes())
    random.Random(44).shuffle(ids)
    sim.partition([ids[:32], ids[32:]])
    assert sim.run_until_converged(60) is not None, (sim.check()[:3], sim.describe())
    sim.heal()
    assert sim.run_until_converged(120) is not None, (sim.check()[:3], sim.describe())
    sent = lookups(sim, 1_000, random.Random(1))
    sim.run_for(5)
    assert score(sim, sent)[0] == 1_000, sim.describe()


def test_a_returning_node_rejoins_cleanly_and_stale_gossip_changes_nothing() -> None:
    sim = build(48, 45)
    nodes = sim.live_nodes()
    witness, victim = nodes[0], nodes[1]
    stale = witness.overlay._own_ref, victim.overlay._own_ref
    sim.crash(victim.id)
    assert sim.run_until_converged(10, step=0.5) is not None, sim.describe()
    # Replay gossip naming the dead node: the dial fails, no table changes.
    from iris_trio.overlay.frames import OverlayState

    before = (list(witness.overlay.leaves), set(witness.overlay.table))
    other = nodes[2]
    sim._call(witness, witness.incarnation, "received", other.id, OverlayState(stale, stale, False))
    sim.run_for(5)
    assert (list(witness.overlay.leaves), set(witness.overlay.table)) == before, sim.describe()
    sim.restart(victim.id)
    assert sim.run_until_converged(30, step=0.5) is not None, sim.describe()
    assert any(victim.id in n.overlay.leaves for n in sim.live_nodes() if n.id != victim.id)


def test_graceful_leave_is_noticed_at_once() -> None:
    sim = build(32, 46)
    leaver = sim.live_nodes()[5].id
    sim.leave(leaver)
    sim.run_for(0.2)
    assert not any(n.overlay.is_connected(leaver) for n in sim.live_nodes()), sim.describe()
    assert sim.check() == [], sim.describe()


def test_connections_are_only_those_some_table_needs() -> None:
    """Links stay bounded: each long-lived one is needed by a table at one end."""
    sim = build(200, 47)
    sim.run_for(sim.config.idle_connection_grace + 5)
    live = {n.id: n.overlay for n in sim.live_nodes()}
    grace = sim.config.idle_connection_grace + sim.config.tick_interval
    settled: list[int] = []
    for node, overlay in live.items():
        old = [p for p in overlay.peers if sim.now - overlay.connected_since(p) >= grace]
        settled.append(len(old))
        for peer in old:
            other = live[peer]
            needed = (
                peer in overlay.leaves
                or peer in overlay.table
                or node in other.leaves
                or node in other.table
            )
            assert needed, sim.describe()
    own = [len(set(o.leaves) | set(o.table)) for o in live.values()]
    # About as many links as table entries, in and out: far from a full mesh.
    assert statistics.mean(settled) <= 2 * statistics.mean(own), sim.describe()
    assert max(settled) < len(live) / 2, sim.describe()


@pytest.mark.parametrize("seed", [46, 47, 48])
def test_a_split_ring_with_seeds_only_merges_once_healed(seed: int) -> None:
    # No discovery: nodes know each other only through seeds and gossip. A 6/6
    # split lasts 20 s, long enough for each side to declare the other dead.
    sim = Simulation(seed, config=OverlayConfig(), beacon_interval=None)
    for _ in range(12):
        sim.spawn(seeds=2)
        sim.run_for(0.05)
    assert sim.run_until_converged(60) is not None, (sim.check()[:3], sim.describe())
    ids = sorted(n.id for n in sim.live_nodes())
    random.Random(seed).shuffle(ids)
    sim.partition([ids[:6], ids[6:]])
    sim.run_for(20)
    assert sim.check() == [], sim.describe()  # two rings, each right on its side
    assert all(len(n.overlay.peers) <= 5 for n in sim.live_nodes())
    sim.heal()
    # One ring again: every leaf set holds the nearest nodes of all twelve.
    assert sim.run_until_converged(60) is not None, (sim.check()[:3], sim.describe())

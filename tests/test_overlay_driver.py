"""The overlay over real secure links on 127.0.0.1, in one trio run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from iris_trio.crypto import DEV_NETWORK, Network, NetworkKey, NodeIdentity
from iris_trio.overlay.config import OverlayConfig
from iris_trio.overlay.discovery import DiscoveryConfig
from iris_trio.overlay.driver import OverlayDriver
from iris_trio.overlay.frames import Route
from iris_trio.overlay.ids import name_id, ring_distance
from iris_trio.overlay.port import IgnoredUpcalls
from iris_trio.overlay.trees import tree_problems
from iris_trio.testing.processes import expected_leaves

from .helpers_cluster import private_discovery, private_network

FAST = OverlayConfig(
    heartbeat_interval=0.25,
    suspect_after=1.0,
    dead_after=2.0,
    exchange_interval=1.0,
    tick_interval=0.1,
)


def consistent(drivers: list[OverlayDriver]) -> bool:
    ids = [d.id for d in drivers]
    for driver in drivers:
        assert driver.overlay is not None
        right, left = expected_leaves(driver.id, ids, driver.config.leaf_size)
        if (driver.overlay.leaves.right, driver.overlay.leaves.left) != (right, left):
            return False
    return True


class _Recorder(IgnoredUpcalls):
    def __init__(self, routed: dict[bytes, int], identity: NodeIdentity) -> None:
        self.routed_to, self.node = routed, int.from_bytes(identity.node_id, "big")

    def routed(self, route: Route) -> None:
        self.routed_to[route.key] = self.node


@asynccontextmanager
async def overlay_network(
    count: int,
    *,
    discovery: DiscoveryConfig | None = None,
    seeded: bool = True,
    network: Network = DEV_NETWORK,
    routed: dict[bytes, int] | None = None,
) -> AsyncIterator[tuple[trio.Nursery, list[OverlayDriver]]]:
    """``routed``: where each routed message's key was delivered (node id)."""
    async with trio.open_nursery() as nursery:
        drivers: list[OverlayDriver] = []
        for _ in range(count):
            seeds = [drivers[0].address] if seeded and drivers else []
            identity = NodeIdentity.generate()
            upcalls = None if routed is None else _Recorder(routed, identity)
            driver = OverlayDriver(
                identity, network, seeds=seeds, discovery=discovery, config=FAST, upcalls=upcalls
            )
            drivers.append(await nursery.start(run_stoppable, driver))
        yield nursery, drivers
        nursery.cancel_scope.cancel()


STOPS: dict[OverlayDriver, trio.CancelScope] = {}


async def run_stoppable(
    driver: OverlayDriver, *, task_status: trio.TaskStatus[OverlayDriver] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.CancelScope() as scope:
        STOPS[driver] = scope
        await driver.run(task_status=task_status)


async def wait_consistent(drivers: list[OverlayDriver], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not consistent(drivers):  # noqa: ASYNC110 - polls the oracle, not a node
            await trio.sleep(0.05)


async def test_nodes_join_through_a_seed_and_route_to_the_closest() -> None:
    delivered: dict[bytes, int] = {}
    async with overlay_network(12, routed=delivered) as (_, drivers):
        await wait_consistent(drivers)
        keys = [bytes([i]) * 16 for i in range(40)]
        for index, key in enumerate(keys):
            overlay = drivers[index % len(drivers)].overlay
            assert overlay is not None
            overlay.route(trio.current_time(), int.from_bytes(key, "big"), b"payload")
            drivers[index % len(drivers)]._flush()
        with trio.fail_after(10):
            while len(delivered) < len(keys):  # noqa: ASYNC110
                await trio.sleep(0.02)
        ids = [d.id for d in drivers]
        for key in keys:
            target = int.from_bytes(key, "big")
            assert delivered[key] == min(ids, key=lambda n: (ring_distance(n, target), n))


async def test_a_leaving_node_is_removed_at_once_and_the_ring_repairs() -> None:
    async with overlay_network(8) as (_, drivers):
        await wait_consistent(drivers)
        leaver = drivers.pop(3)
        STOPS[leaver].cancel()  # leaving the async scope leaves the overlay gracefully
        with trio.fail_after(1):  # far below the silent-failure bound
            while any(d.overlay and d.overlay.is_connected(leaver.id) for d in drivers):  # noqa: ASYNC110
                await trio.sleep(0.02)
        await wait_consistent(drivers)


async def test_loopback_discovery_finds_nodes_without_seeds() -> None:
    # A network and a loopback port range of the test's own: a user's dev nodes
    # (on the default range) are neither heard nor disturbed.
    found = private_discovery(fast_interval=0.2, slow_interval=1.0)
    mine = private_network("driver-discovery")
    async with overlay_network(5, discovery=found, seeded=False, network=mine) as (_, drivers):
        await wait_consistent(drivers, timeout=30)
        for driver in drivers:
            with trio.fail_after(10):
                await driver.wait_converged(quiet=0.5)


async def test_a_node_of_another_network_never_enters_the_tables() -> None:
    found = private_discovery(fast_interval=0.2, slow_interval=1.0)
    mine = private_network("driver-stranger")
    stranger_network = Network(mine.name, NetworkKey.generate())  # same name, other key
    async with overlay_network(3, discovery=found, seeded=False, network=mine) as (tasks, drivers):
        stranger = OverlayDriver(
            NodeIdentity.generate(),
            stranger_network,
            seeds=[drivers[0].address],
            discovery=found,
            config=FAST,
        )
        await tasks.start(stranger.run)
        await wait_consistent(drivers, timeout=30)
        await trio.sleep(1)
        for driver in drivers:
            assert driver.overlay is not None
            assert not driver.overlay.is_connected(stranger.id)
            assert stranger.id not in driver.overlay.leaves
        assert stranger.overlay is not None and len(stranger.overlay.leaves) == 0


async def test_trees_over_real_links() -> None:
    tree = name_id("topic", "driver-news")
    async with overlay_network(10) as (_, drivers):
        await wait_consistent(drivers)
        members = {d.id for d in drivers[::2]}
        for driver in drivers[::2]:
            driver.join_tree(tree)
        closest = min((d.id for d in drivers), key=lambda n: (ring_distance(n, tree), n))

        def problems() -> list[str]:
            states = {
                d.id: d.trees.trees[tree]
                for d in drivers
                if d.trees is not None and tree in d.trees.trees
            }
            return tree_problems(states, members, closest)

        with trio.fail_after(10):
            while problems():  # noqa: ASYNC110 - polls the oracle
                await trio.sleep(0.05)
        for driver in drivers[::2]:
            driver.leave_tree(tree)
        members = set()
        with trio.fail_after(10):
            while problems():  # noqa: ASYNC110
                await trio.sleep(0.05)

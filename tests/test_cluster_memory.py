"""The patterns over the in-memory transport, on trio's virtual clock (open_cluster)."""

from __future__ import annotations

import collections
import hashlib
import random
import time
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.crypto import NodeIdentity
from iris_trio.errors import ConfigError
from iris_trio.overlay.driver import split_address
from iris_trio.testing import Cluster, MemoryNetwork, open_cluster
from iris_trio.testing.processes import expected_leaves


def echo_from(name: str, counts: collections.Counter[str]) -> Callable[[bytes], Awaitable[bytes]]:
    async def handler(data: bytes) -> bytes:
        counts[name] += 1
        await trio.sleep(0.001)  # some work: requests overlap on the member
        return name.encode() + b":" + data

    return handler


async def serve_members(
    nursery: trio.Nursery, members: list[iris_trio.Node], counts: collections.Counter[str]
) -> None:
    for index, node in enumerate(members):
        await nursery.start(node.serve, echo_from(f"m{index}", counts), "echo")


def assert_exact_leaf_sets(cluster: Cluster) -> None:
    ids = [node.driver.id for node in cluster]
    for node in cluster:
        overlay = node.driver.overlay
        assert overlay is not None
        size = node.driver.config.leaf_size
        assert (overlay.leaves.right, overlay.leaves.left) == expected_leaves(
            node.driver.id, ids, size
        )


async def test_twelve_nodes_join_with_exact_leaf_sets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    memory = MemoryNetwork()
    async with open_cluster(12, memory=memory) as cluster:
        assert len(cluster) == 12
        assert all(node.joined for node in cluster)
        assert_exact_leaf_sets(cluster)
        assert sorted(memory.addresses) == sorted(node.address for node in cluster)
        for node in cluster:
            host, port = split_address(node.address)
            assert (host, port > 0) == ("memory", True)
        # One more node joins the running overlay; another leaves it.
        newcomer = await cluster.add()
        assert cluster[-1] is newcomer and len(cluster) == 13
        assert_exact_leaf_sets(cluster)
        leaving = cluster[5]
        await cluster.stop(leaving)
        assert leaving not in cluster and leaving.address not in memory.addresses
        await cluster.wait_converged()
        assert_exact_leaf_sets(cluster)
    assert memory.addresses == []  # every node left: no address stays in the book


async def test_a_second_cluster_on_the_memory_network_joins_the_same_overlay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_cluster(4) as first,
        open_cluster(3, memory=first.memory) as second,
    ):
        assert second.network is first.network
        await first.wait_converged()  # every leaf set counts all seven nodes
        ids = {node.driver.id for node in [*first, *second]}
        for node in [*first, *second]:
            overlay = node.driver.overlay
            assert overlay is not None and set(overlay.leaves) == ids - {node.driver.id}


async def test_requests_are_answered_once_and_spread_over_five_members(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(8) as cluster, trio.open_nursery() as servers:
        counts: collections.Counter[str] = collections.Counter()
        members = list(cluster[3:8])
        await serve_members(servers, members, counts)
        answers: dict[bytes, bytes] = {}

        async def client(node: iris_trio.Node, prefix: bytes) -> None:
            for sequence in range(200):
                question = prefix + b"%d" % sequence
                answers[question] = await node.request("echo", question, timeout=10)

        with trio.fail_after(120):
            async with trio.open_nursery() as load:
                for index, node in enumerate(cluster[:3]):
                    for lane in range(4):
                        load.start_soon(client, node, b"c%d.%d." % (index, lane))
        assert len(answers) == 2400
        for question, answer in answers.items():
            assert answer.split(b":", 1)[1] == question  # no cross-wired replies
        assert sum(counts.values()) == len(answers)  # each handled exactly once
        share = len(answers) / len(members)
        assert len(counts) == len(members)
        for name, count in counts.items():
            assert abs(count - share) <= 0.25 * share, (name, counts)
        servers.cancel_scope.cancel()


async def test_every_subscriber_gets_every_event_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(8) as cluster:
        subscribers = [cluster[1], cluster[4], cluster[6], cluster[7]]
        events = [b"event %d" % i for i in range(500)]
        received: dict[int, list[bytes]] = {}

        async def collect(node: iris_trio.Node, index: int, task_status: trio.TaskStatus) -> None:
            into = received.setdefault(index, [])
            async with node.subscribe("news") as subscription:
                task_status.started()
                while len(into) < len(events):
                    into.append(await subscription.receive())

        with trio.fail_after(60):
            async with trio.open_nursery() as readers:
                for index, node in enumerate(subscribers):
                    await readers.start(collect, node, index)
                for event in events:
                    await cluster[2].publish("news", event)
        assert received == {index: events for index in range(len(subscribers))}


async def test_a_broadcast_reaches_every_member(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(9) as cluster:
        members = list(cluster[2:9])
        messages = [b"hello %d" % i for i in range(50)]
        received: dict[int, list[bytes]] = {}

        async def member(node: iris_trio.Node, index: int, task_status: trio.TaskStatus) -> None:
            into = received.setdefault(index, [])
            async with node.broadcasts("chat") as inbox:
                task_status.started()
                while len(into) < len(messages):
                    into.append(await inbox.receive())

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index, node in enumerate(members):
                    await nursery.start(member, node, index)
                for message in messages:
                    await cluster[0].broadcast("chat", message)
        assert received == {index: messages for index in range(len(members))}


async def test_a_tunnel_carries_a_mebibyte_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(12)
    sizes = [1, 1000, 65_536, 300_000, 17, 200_000]
    sizes.append((1 << 20) - sum(sizes))
    messages = [rng.randbytes(size) for size in sizes]
    async with open_cluster(5) as cluster, trio.open_nursery() as nursery:
        received: list[bytes] = []
        done = trio.Event()

        async def sink(task_status: trio.TaskStatus) -> None:
            async with cluster[4].tunnels("storage") as incoming:
                task_status.started()
                async with await incoming.receive() as tunnel:
                    async for message in tunnel:
                        received.append(message)
                        await tunnel.send(hashlib.blake2b(message).digest())
            done.set()

        await nursery.start(sink)
        with trio.fail_after(60):
            async with cluster[0].tunnel("storage") as tunnel:
                for message in messages:
                    await tunnel.send(message)
                for message in messages:
                    assert await tunnel.receive() == hashlib.blake2b(message).digest()
            await done.wait()
        assert received == messages
        assert sum(map(len, received)) == 1 << 20


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_requests_go_on_to_the_others_when_a_member_dies(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async with open_cluster(7) as cluster, trio.open_nursery() as servers:
        counts: collections.Counter[str] = collections.Counter()
        members = list(cluster[3:7])
        await serve_members(servers, members, counts)
        outcomes: collections.Counter[str] = collections.Counter()

        async def lane(node: iris_trio.Node, prefix: bytes) -> None:
            for sequence in range(100):
                try:
                    answer = await node.request("echo", prefix + b"%d" % sequence, timeout=10)
                except (
                    iris_trio.RequestTimeoutError,
                    iris_trio.RemoteError,
                    iris_trio.RequestLostError,  # it may have run: at once, not retried
                ) as exc:
                    outcomes[type(exc).__name__] += 1  # in flight at the dead member
                else:
                    assert answer.endswith(b":" + prefix + b"%d" % sequence)
                    outcomes["answered"] += 1

        victim = members[1]
        with trio.fail_after(60):
            async with trio.open_nursery() as load:
                for index in range(12):
                    load.start_soon(lane, cluster[index % 3], b"%d." % index)
                await trio.sleep(0.05)  # requests in flight everywhere
                assert counts["m1"] > 0
                if how == "kill":
                    await cluster.kill(victim)  # its links break: no goodbye reaches anyone
                else:
                    await cluster.stop(victim)  # it leaves gracefully
        # Every request got an answer or a typed error, none hung; only those
        # at the dead member (at most one per lane) failed.
        assert outcomes.total() == 1200 and outcomes["answered"] >= 1200 - 12, outcomes
        counts.clear()
        with trio.fail_after(60):
            for sequence in range(200):
                answer = await cluster[1].request("echo", b"after %d" % sequence, timeout=10)
                assert answer.endswith(b":after %d" % sequence)
        assert sum(counts.values()) == 200
        assert set(counts) == {"m0", "m2", "m3"}  # never the dead member
        servers.cancel_scope.cancel()


async def test_a_killed_node_is_cut_off_until_revived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(5) as cluster:
        victim = cluster[2]
        others = [node for node in cluster if node is not victim]
        cluster.memory.kill(victim.address)  # the node runs on, but reaches nobody
        with trio.fail_after(30):
            for node in others:
                while victim.driver.id in node.driver.overlay.leaves:  # type: ignore[union-attr]
                    await node.driver.wait_converged(quiet=0.5)
        assert victim.driver.statistics().links == 0
        with pytest.raises(ConnectionRefusedError):
            async with cluster.memory.connect(
                victim.address, identity=NodeIdentity.generate(), network=cluster.network
            ):
                pass  # pragma: no cover
        cluster.memory.revive(victim.address)
        await cluster.wait_converged()  # it dials its seed again and is back
        assert_exact_leaf_sets(cluster)


async def test_ten_virtual_minutes_of_heartbeats_take_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(5) as cluster:
        dials = [node.driver.statistics().dials for node in cluster]
        links = [node.driver.statistics().links for node in cluster]
        wall, virtual = time.perf_counter(), trio.current_time()
        await trio.sleep(600)  # idle: heartbeats, keepalives and gossip only
        wall, virtual = time.perf_counter() - wall, trio.current_time() - virtual
        print(f"600 virtual seconds of a 5-node overlay took {wall:.2f} s of wall time")
        assert virtual >= 600
        # Every link stayed up all along: no peer looked dead, nobody redialled.
        assert [node.driver.statistics().dials for node in cluster] == dials
        assert [node.driver.statistics().links for node in cluster] == links
        assert not cluster.leaf_problems()


async def test_discovery_needs_tcp(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ConfigError, match="discovery"):
        await iris_trio.serve_node(transport=MemoryNetwork(), discovery="loopback")


async def test_an_unknown_memory_address_is_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    memory = MemoryNetwork("mem")
    start = trio.current_time()
    with pytest.raises(ConnectionRefusedError):
        async with memory.connect(
            "mem:99", identity=NodeIdentity.generate(), network=iris_trio.DEV_NETWORK
        ):
            pass  # pragma: no cover
    assert trio.current_time() == start  # not even a virtual moment
    with pytest.raises(ValueError, match="plain host name"):
        MemoryNetwork("a:b")

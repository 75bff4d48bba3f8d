"""node.statistics(): every pattern's counters move as the patterns are used."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.testing import open_cluster

from .helpers_cluster import wait_until


async def echo(data: bytes) -> bytes:
    if data == b"fail":
        raise ValueError("no")
    return data


async def test_statistics_count_every_pattern(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3) as group, trio.open_nursery() as nursery:
        sender, member = group[0], group[2]
        await nursery.start(member.serve, echo, "svc")
        async with member.subscribe("news", capacity=4), member.broadcasts():
            for number in range(10):
                await sender.publish("news", b"%d" % number)
                await sender.broadcast("svc", b"%d" % number)
            for _ in range(5):
                assert await sender.request("svc", b"x", timeout=5) == b"x"
            with pytest.raises(iris_trio.RemoteError):
                await sender.request("svc", b"fail", timeout=5)

            async def take(*, task_status: trio.TaskStatus[None]) -> None:
                async with member.tunnels("svc") as incoming:
                    task_status.started()
                    async with await incoming.receive() as tunnel:
                        await tunnel.send(await tunnel.receive())

            await nursery.start(take)
            async with sender.tunnel("svc") as tunnel:
                await tunnel.send(b"12345")
                assert await tunnel.receive() == b"12345"
            await wait_until(
                group,
                lambda: member.statistics().events_received >= 20,
                what="10 events and 10 broadcasts at the member",
            )
            sent, got = sender.statistics(), member.statistics()
        assert (sent.published, sent.broadcasts_sent) == (10, 10)
        assert (sent.requests_sent, sent.requests_answered, sent.requests_failed) == (6, 5, 1)
        assert sent.requests_pending == 0
        assert (sent.tunnels_opened, sent.tunnel_bytes_sent, sent.tunnel_bytes_received) == (
            1,
            5,
            5,
        )
        assert got.events_received == 20
        assert got.events_dropped == 6  # the topic's buffer of 4 kept the last 4
        assert got.events_buffered == 14  # 4 events and 10 broadcasts, nobody read them
        assert (got.requests_received, got.tunnels_accepted) == (6, 1)
        assert got.links >= 1
        nursery.cancel_scope.cancel()


async def test_statistics_show_the_overlay_in_brief(autojump_clock: trio.testing.MockClock) -> None:
    """What the daemon's status line shows comes from node.statistics(), not
    from the driver's insides: the node's id, whether it joined, its peers and
    its exact leaf set."""
    async with open_cluster(5) as group:
        ids = sorted(f"{node.driver.id:032x}" for node in group)
        for node in group:
            figures = node.statistics()
            assert figures.node_id == f"{node.driver.id:032x}" and figures.joined
            assert figures.peers == 4 and figures.peers_declared_dead == 0
            leaves = set(figures.leaves_right) | set(figures.leaves_left)
            assert leaves == set(ids) - {figures.node_id}  # five nodes: all are leaves
            assert figures.table_entries >= 1

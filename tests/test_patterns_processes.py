"""The patterns between real node processes on 127.0.0.1."""

from __future__ import annotations

import collections

import pytest
import trio

import iris_trio
from iris_trio.bench.patterns import peers


async def test_five_member_processes_share_ten_thousand_requests_from_three_clients() -> None:
    answered: dict[bytes, bytes] = {}
    async with (
        iris_trio.join(discovery="off") as first,
        peers(first, "tagged", "cluster", copies=5) as (cluster, members),
        iris_trio.join(seeds=[first.address], discovery="off") as second,
        iris_trio.join(seeds=[first.address], discovery="off") as third,
    ):
        with trio.fail_after(30):
            for node in (first, second, third):
                await node.wait_joined()

        async def lane(client: iris_trio.Node, prefix: bytes, count: int = 625) -> None:
            for number in range(count):
                question = prefix + b"%d" % number
                answered[question] = await client.request(cluster, question, timeout=20)

        # At once, from the two clients that only just joined (their replies may
        # reach nodes that do not know them yet): every one is answered.
        with trio.fail_after(60):
            async with trio.open_nursery() as early:
                for index, client in enumerate((second, third)):
                    early.start_soon(lane, client, b"early%d." % index, 300)
        assert len(answered) == 600
        answered.clear()
        # Then, once the overlay has settled, the load is shared evenly.
        with trio.fail_after(30):
            for node in (first, second, third):
                await node.wait_converged(quiet=1.0)
        await trio.sleep(1.5)  # a heartbeat round: every member's capacity is known
        with trio.fail_after(120):
            async with trio.open_nursery() as load:
                for index, client in enumerate((first, second, third, first)):
                    for lane_number in range(4):
                        load.start_soon(lane, client, b"%d.%d." % (index, lane_number))
    assert len(answered) == 10_000
    shares: collections.Counter[bytes] = collections.Counter()
    for question, answer in answered.items():
        member, _, echoed = answer.partition(b":")
        assert echoed == question  # no cross-wired replies
        shares[member] += 1
    assert len(shares) == 5, shares
    for member, count in shares.items():
        assert abs(count - 2000) <= 0.25 * 2000, (member, shares)
    assert len(members) == 5


async def test_a_killed_tunnel_end_is_an_error_in_both_directions() -> None:
    async with (
        iris_trio.join(discovery="off") as node,
        peers(node, "sink", "cluster") as (cluster, far),
    ):
        with trio.fail_after(20):
            async with node.tunnel(cluster) as tunnel:
                await tunnel.send(b"1000000")  # the sink now reads a million messages
                await tunnel.send(b"x")
                far[0].process.kill()  # SIGKILL by pid: no goodbye
                with pytest.raises(trio.BrokenResourceError):
                    await tunnel.receive()
                with pytest.raises(trio.BrokenResourceError):
                    for _ in range(100_000):
                        await tunnel.send(b"after")

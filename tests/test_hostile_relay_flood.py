"""Issue 14, item 1: one unauthenticated relay client with 100,000 subscriptions
must not cut its node out of the overlay. With the default limits the
connection is closed at the limit with a reason, everything it held is
released, and the ring stays intact (three nodes over real TCP on loopback)."""

from __future__ import annotations

import collections
import contextlib

import trio

import iris_trio
from iris_trio.relay import Relay, RelayLimits, serve_relay
from iris_trio.relay.codec import NodeClose, Packet

from .helpers_cluster import echo_from, tcp_nodes
from .test_hostile_relay import receivers, wait_for
from .test_relay_conformance import Raw, init, subscribe

FLOOD = 100_000


async def flood_and_close(relay: Relay) -> list[Packet]:
    """Subscribe to FLOOD topics on one connection, then close it; what the
    relay sent before the connection ended."""
    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
    client = Raw(stream)
    packets = b"".join(subscribe(f"flood-{i}") for i in range(FLOOD))
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(init() + packets)
        with contextlib.suppress(AssertionError, trio.BrokenResourceError):
            return await client.closed(timeout=60)
    return []


async def test_a_subscription_flood_is_cut_at_the_limit_and_the_ring_stays_intact() -> None:
    limits = RelayLimits()
    async with tcp_nodes(3) as nodes, trio.open_nursery() as nursery:
        target, other, member = nodes
        relay: Relay = await nursery.start(
            lambda task_status: serve_relay(target, 0, limits=limits, task_status=task_status)
        )
        await nursery.start(member.serve, echo_from("member", collections.Counter()), "echo")
        before = [node.statistics().peers_declared_dead for node in nodes]

        closing = await flood_and_close(relay)

        await wait_for(lambda: relay.statistics().limits_exceeded == 1, "the flood was cut")
        reason = f"limit exceeded: more than {limits.subscriptions} subscriptions on one connection"
        closes = [packet for packet in closing if isinstance(packet, NodeClose)]
        assert closes in ([], [NodeClose(reason)])  # a reset may swallow the CLOSE
        await wait_for(lambda: relay.statistics().connections_open == 0, "the client is gone")
        await wait_for(lambda: receivers(target) == 0, "every subscription released")
        # The overlay did not lose anybody, and the node still answers.
        assert [node.statistics().peers_declared_dead for node in nodes] == before
        assert all(node.statistics().peers == 2 for node in nodes)
        for asking in (target, other):
            with trio.fail_after(10):
                assert await asking.request("echo", b"ping") == b"member:ping"
        nursery.cancel_scope.cancel()


async def test_floods_on_many_connections_stop_at_the_node_total() -> None:
    limits = RelayLimits(subscriptions=300, total_subscriptions=1000)
    async with tcp_nodes(3) as nodes, trio.open_nursery() as nursery:
        target = nodes[0]
        relay: Relay = await nursery.start(
            lambda task_status: serve_relay(target, 0, limits=limits, task_status=task_status)
        )
        async with trio.open_nursery() as floods:
            for _ in range(6):
                floods.start_soon(flood_and_close, relay)
        await wait_for(lambda: relay.statistics().limits_exceeded == 6, "every flood was cut")
        await wait_for(lambda: receivers(target) == 0, "every subscription released")
        assert all(node.statistics().peers == 2 for node in nodes)
        assert all(node.statistics().peers_declared_dead == 0 for node in nodes)
        nursery.cancel_scope.cancel()


async def test_the_node_serves_again_after_a_flood() -> None:
    async with tcp_nodes(2) as nodes, trio.open_nursery() as nursery:
        relay: Relay = await nursery.start(
            lambda task_status: serve_relay(nodes[0], 0, task_status=task_status)
        )
        await flood_and_close(relay)
        await wait_for(lambda: relay.statistics().connections_open == 0, "the client is gone")
        async with iris_trio.connect(relay.port) as client, client.subscribe("news") as events:
            await nodes[1].publish("news", b"after the flood")
            with trio.fail_after(10):
                assert await events.receive() == b"after the flood"
        nursery.cancel_scope.cancel()

"""Hostile relay clients: every resource of a connection, and of all connections
together, is bounded; exceeding a limit closes the connection with a reason;
everything is released when the client goes (real TCP on loopback)."""

from __future__ import annotations

from collections.abc import Callable

import trio

import iris_trio
from iris_trio.relay import RelayLimits
from iris_trio.relay.codec import Deny, NodeClose, Publish

from .relay_helpers import relay_node
from .test_relay_conformance import Raw, init, publish, raw, request, subscribe

EVENT = b"e" * (64 * 1024)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Until ``condition()`` holds (a named wait on counters, with a deadline)."""
    with trio.move_on_after(timeout) as scope:
        while not condition():  # noqa: ASYNC110 - counters have no event to wait on
            await trio.sleep(0.01)
    if scope.cancelled_caught:
        raise AssertionError(f"not within {timeout} s: {what}")


def receivers(node: iris_trio.Node) -> int:
    """Subscriptions and broadcast receivers open on ``node`` (white box: the
    node's statistics count events, not receivers)."""
    return node._pubsub.receivers


async def test_subscriptions_beyond_the_limit_close_the_connection_with_a_reason() -> None:
    limits = RelayLimits(subscriptions=8)
    async with relay_node(limits) as (node, relay), raw(relay) as client:
        await client.send(*(subscribe(f"t{i}") for i in range(9)))
        rest = await client.closed(timeout=20)
        assert rest[-1] == NodeClose("limit exceeded: more than 8 subscriptions on one connection")
        assert relay.statistics().limits_exceeded == 1
        # Everything it held is released.
        await wait_for(lambda: receivers(node) == 0, "subscriptions released")
        assert relay.statistics().subscriptions == 0


async def test_subscriptions_of_all_connections_together_are_bounded() -> None:
    limits = RelayLimits(subscriptions=8, total_subscriptions=12)
    async with relay_node(limits) as (node, relay):
        async with raw(relay) as first, raw(relay) as second, raw(relay) as publisher:
            await first.send(*(subscribe(f"a{i}") for i in range(8)))
            await first.barrier()
            await second.send(*(subscribe(f"b{i}") for i in range(5)))
            rest = await second.closed(timeout=20)
            assert rest[-1] == NodeClose(
                "limit exceeded: the node serves 12 subscriptions to relay clients"
            )
            # The first client is not affected.
            await publisher.send(publish("a3", b"still here"))
            assert await first.expect(Publish) == Publish("a3", b"still here")
        await wait_for(lambda: receivers(node) == 0, "subscriptions released")


async def test_connections_beyond_the_node_limit_are_denied() -> None:
    limits = RelayLimits(connections=2)
    async with relay_node(limits) as (_, relay), raw(relay), raw(relay):
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(init())
            third = Raw(stream)
            denied = await third.expect(Deny)
            assert isinstance(denied, Deny) and "relay clients" in denied.reason


async def test_silent_sockets_at_the_connection_limit_make_room_for_real_clients() -> None:
    # Sockets that never send INIT fill every place: a real client still gets
    # in (the oldest silent one is closed), rather than a DENY for 10 s.
    limits = RelayLimits(connections=4)
    async with relay_node(limits) as (_, relay):
        silent = [await trio.open_tcp_stream("127.0.0.1", relay.port) for _ in range(4)]
        await wait_for(lambda: relay.statistics().connections_open == 4, "four open")
        async with raw(relay) as client:
            await client.send(publish("t", b"x"))
            assert relay.statistics().evicted == 1
            assert relay.statistics().connections_open == 4
        # A flood of silent sockets evicts only silent ones: the places stay
        # bounded, and a real client still gets in.
        many = [await trio.open_tcp_stream("127.0.0.1", relay.port) for _ in range(80)]
        await wait_for(lambda: relay.statistics().evicted >= 80, "the flood evicted")
        assert relay.statistics().connections_open <= 4
        async with raw(relay) as client:
            await client.send(publish("t", b"y"))
        for stream in silent + many:
            await stream.aclose()


async def test_a_subscriber_that_never_reads_is_bounded_in_bytes_and_released() -> None:
    """3,000 events of 64 KiB to a client that never reads: the node buffers at
    most its byte bounds (not 4,096 events of any size), counts the drops, and
    frees everything once the client goes."""
    limits = RelayLimits(event_bytes=1 << 20, buffered_bytes=2 << 20, queued_bytes=1 << 20)
    async with relay_node(limits) as (node, relay):
        async with raw(relay) as stalled:
            await stalled.send(subscribe("t"), subscribe("u"))
            await stalled.barrier()
            most = 0
            for i in range(3000):
                await node.publish("t" if i % 2 else "u", EVENT)
                if i % 100 == 0:
                    most = max(most, node.statistics().events_buffered)
            await wait_for(
                lambda: node.statistics().events_buffered * len(EVENT) <= limits.buffered_bytes,
                "the buffers settled",
            )
            most = max(most, node.statistics().events_buffered)
            # Two topics, 1 MiB each at most, 2 MiB together (one event over: the newest).
            assert most * len(EVENT) <= limits.buffered_bytes + len(EVENT)
            assert relay.statistics().events_dropped > 2500
        await wait_for(lambda: receivers(node) == 0, "subscriptions released")
        assert node.statistics().events_buffered == 0


async def test_non_reading_clients_together_are_bounded_by_the_node_budget() -> None:
    """Three clients that never read hold at most the node's budget together,
    and a client that keeps up loses nothing to them: a full budget drops the
    oldest events of the fullest buffer."""
    limits = RelayLimits(
        event_bytes=1 << 20,
        buffered_bytes=1 << 20,
        total_buffered_bytes=2 << 20,
        queued_bytes=1 << 16,
    )
    async with relay_node(limits) as (node, relay):
        async with raw(relay) as a, raw(relay) as b, raw(relay) as c, raw(relay) as reader:
            for client in (a, b, c, reader):
                await client.send(subscribe("t"))
                await client.barrier()
            for i in range(300):
                await node.publish("t", EVENT)
                assert await reader.expect(Publish, timeout=30) == Publish("t", EVENT), i
                # The stalled clients together hold at most the node's budget.
                assert relay.statistics().buffered_bytes <= limits.total_buffered_bytes
            assert relay.statistics().events_dropped > 0  # the stalled clients'
        await wait_for(lambda: receivers(node) == 0, "subscriptions released")
        assert relay.statistics().buffered_bytes == 0


async def test_pending_requests_of_all_connections_together_are_bounded() -> None:
    limits = RelayLimits(pending_requests=8, total_pending_requests=10)
    async with relay_node(limits) as (node, relay):
        async with node.requests("slow") as _incoming, raw(relay) as a, raw(relay) as b:
            await a.send(*(request(i, "slow", b"", 60_000) for i in range(8)))
            await b.send(*(request(i, "slow", b"", 60_000) for i in range(8)))
            await wait_for(lambda: node.statistics().requests_sent >= 10, "ten requests went out")
            await b.nothing_for(0.3)
            assert node.statistics().requests_sent == 10
            assert relay.statistics().pending_requests == 10

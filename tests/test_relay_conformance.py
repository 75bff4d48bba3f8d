"""Conformance of the relay with specs/relay-protocol.md, driven over raw sockets.

Packets to the node are built byte by byte here from the spec (opcode, then
varints / bools / binaries / strings); the node's packets are parsed with the
codec, whose byte-exactness tests/test_relay_codec.py checks.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import iris_trio
from iris_trio.relay import Relay, RelayLimits, serve_relay
from iris_trio.relay.codec import (
    BroadcastDelivery,
    Deny,
    NodeClose,
    NodeInit,
    Packet,
    PacketReader,
    Publish,
    ReplyDelivery,
    RequestDelivery,
    TunnelAllow,
    TunnelBuild,
    TunnelClosed,
    TunnelConfirmed,
    TunnelTransfer,
)

from .relay_helpers import relay_node

# ------------------------------------------------------- the spec's encodings


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def binary(data: bytes) -> bytes:
    return varint(len(data)) + data


def string(text: str) -> bytes:
    return binary(text.encode())


def init(
    cluster: str = "", version: str = "v1.0-draft2", magic: str = "iris-client-magic"
) -> bytes:
    return b"\x00" + string(magic) + string(version) + string(cluster)


CLOSE = b"\x02"


def broadcast(cluster: str, message: bytes) -> bytes:
    return b"\x03" + string(cluster) + binary(message)


def request(request_id: int, cluster: str, data: bytes, timeout_ms: int) -> bytes:
    return b"\x04" + varint(request_id) + string(cluster) + binary(data) + varint(timeout_ms)


def reply(request_id: int, data: bytes) -> bytes:
    return b"\x05" + varint(request_id) + b"\x01" + binary(data)


def fault(request_id: int, text: str) -> bytes:
    return b"\x05" + varint(request_id) + b"\x00" + string(text)


def subscribe(topic: str) -> bytes:
    return b"\x06" + string(topic)


def unsubscribe(topic: str) -> bytes:
    return b"\x07" + string(topic)


def publish(topic: str, event: bytes) -> bytes:
    return b"\x08" + string(topic) + binary(event)


def tunnel_init(tunnel_id: int, cluster: str, timeout_ms: int) -> bytes:
    return b"\x09" + varint(tunnel_id) + string(cluster) + varint(timeout_ms)


def tunnel_confirm(build_id: int, tunnel_id: int) -> bytes:
    return b"\x0a" + varint(build_id) + varint(tunnel_id)


def tunnel_allow(tunnel_id: int, size: int) -> bytes:
    return b"\x0b" + varint(tunnel_id) + varint(size)


def tunnel_transfer(tunnel_id: int, size: int, chunk: bytes) -> bytes:
    return b"\x0c" + varint(tunnel_id) + varint(size) + binary(chunk)


def tunnel_close(tunnel_id: int) -> bytes:
    return b"\x0d" + varint(tunnel_id)


# ------------------------------------------------------------- a raw client


class Raw:
    """One raw connection to the relay."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = PacketReader("node")
        self.packets: list[Packet] = []

    async def send(self, *parts: bytes) -> None:
        await self.stream.send_all(b"".join(parts))

    async def next(self, timeout: float = 5.0) -> Packet:
        with trio.fail_after(timeout):
            while not self.packets:
                data = await self.stream.receive_some(1 << 20)
                assert data, "the relay closed the connection"
                self.packets += self.reader.feed(data)
        return self.packets.pop(0)

    async def expect(self, kind: type[Packet], timeout: float = 5.0) -> Packet:
        packet = await self.next(timeout)
        assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
        return packet

    async def nothing_for(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            packet = await self.next(seconds + 1)
            raise AssertionError(f"unexpected {packet!r}")

    async def closed(self, timeout: float = 5.0) -> list[Packet]:
        """Everything until the relay closes the socket."""
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(1 << 20)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    rest, self.packets = self.packets, []
                    return rest
                self.packets += self.reader.feed(data)

    async def barrier(self) -> None:
        """Wait until the relay acted on all sent before (requests are answered in
        order with the packets before them)."""
        await self.send(request(999_999, "", b"", 1))
        while True:
            packet = await self.next()
            if isinstance(packet, ReplyDelivery) and packet.id == 999_999:
                return
            self.packets.insert(0, packet)  # pragma: no cover - not expected here
            raise AssertionError(f"unexpected {packet!r}")


@asynccontextmanager
async def raw(relay: Relay, cluster: str = "", host: str = "127.0.0.1") -> AsyncIterator[Raw]:
    stream = await trio.open_tcp_stream(host, relay.port)
    async with stream:
        client = Raw(stream)
        await client.send(init(cluster))
        await client.expect(NodeInit)
        yield client


# ------------------------------------------------------------------ handshake


async def test_the_handshake_answers_with_the_relay_magic_and_version_exactly() -> None:
    async with relay_node() as (_, relay):
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(init())
            expected = b"\x00" + string("iris-relay-magic") + string("v1.0-draft2")
            received = b""
            with trio.fail_after(5):
                while len(received) < len(expected):
                    received += await stream.receive_some(1024)
            assert received == expected


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (
            init(version="v1.0-draft1"),
            "Unsupported protocol. Client: v1.0-draft1. Iris: v1.0-draft2.",
        ),
        (
            init(version="v1.0-draft2 "),
            "Unsupported protocol. Client: v1.0-draft2 . Iris: v1.0-draft2.",
        ),
        (init(magic="iris-clent-magic"), "Unsupported protocol magic: 'iris-clent-magic'."),
    ],
)
async def test_a_wrong_version_or_magic_is_denied_with_a_reason_then_closed(
    hello: bytes, reason: str
) -> None:
    async with relay_node() as (_, relay):
        async with await trio.open_tcp_stream("127.0.0.1", relay.port) as stream:
            client = Raw(stream)
            await client.send(hello)
            assert await client.closed() == [Deny("iris-relay-magic", reason)]
        assert relay.statistics().denied == 1


async def test_the_relay_listens_on_both_loopback_addresses_only() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, host="127.0.0.1"):
            pass
        if socket.has_ipv6:
            try:
                async with raw(relay, host="::1"):
                    pass
            except OSError:  # pragma: no cover - a host without ::1
                pass
        assert relay.addresses
        assert {host for host, _ in relay.addresses} <= {"127.0.0.1", "::1"}
        assert {port for _, port in relay.addresses} == {relay.port}


async def test_a_client_that_never_says_init_is_closed_after_the_handshake_timeout() -> None:
    async with relay_node(RelayLimits(handshake_timeout=0.3)) as (_, relay):
        async with await trio.open_tcp_stream("127.0.0.1", relay.port) as stream:
            assert await Raw(stream).closed(timeout=3) == []


# ------------------------------------------------------------- request/reply


async def test_a_request_goes_to_a_member_with_its_own_id_and_the_remaining_timeout() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "echo") as service, raw(relay) as one, raw(relay) as two:
            await one.send(request(1, "echo", b"from one", 2000))
            await two.send(request(1, "echo", b"from two", 2000))  # ids are per connection
            first = await service.expect(RequestDelivery)
            second = await service.expect(RequestDelivery)
            assert isinstance(first, RequestDelivery) and isinstance(second, RequestDelivery)
            assert first.id != second.id
            assert {first.request, second.request} == {b"from one", b"from two"}
            assert 0 < first.timeout_ms <= 2000 and 0 < second.timeout_ms <= 2000
            await service.send(reply(first.id, first.request.upper()), reply(second.id, b"x"))
            got_one = await one.expect(ReplyDelivery)
            got_two = await two.expect(ReplyDelivery)
            replies = {first.request: first.request.upper(), second.request: b"x"}
            assert got_one == ReplyDelivery(1, False, True, reply=replies[b"from one"])
            assert got_two == ReplyDelivery(1, False, True, reply=replies[b"from two"])


async def test_an_unanswered_request_times_out_and_a_late_reply_is_discarded() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "slow") as service, raw(relay) as client:
            started = trio.current_time()
            await client.send(request(7, "slow", b"q", 300))
            delivered = await service.expect(RequestDelivery)
            assert isinstance(delivered, RequestDelivery)
            assert await client.expect(ReplyDelivery) == ReplyDelivery(7, True)
            assert 0.25 < trio.current_time() - started < 2.0
            # The member's deadline is the remaining time rounded up to a whole
            # millisecond, so it may pass a moment after the requester's.
            await trio.sleep(0.05)
            await service.send(reply(delivered.id, b"too late"))
            await service.barrier()  # still connected
            await client.nothing_for(0.2)
            assert relay.statistics().unknown_replies == 1


async def test_a_handler_failure_arrives_as_a_fault_and_no_member_as_no_responders() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "calc") as service, raw(relay) as client:
            await client.send(request(3, "calc", b"1/0", 2000))
            delivered = await service.expect(RequestDelivery)
            assert isinstance(delivered, RequestDelivery)
            await service.send(fault(delivered.id, "division by zero"))
            assert await client.expect(ReplyDelivery) == ReplyDelivery(
                3, False, False, fault="division by zero"
            )
            await client.send(request(4, "nobody", b"?", 2000))
            answer = await client.expect(ReplyDelivery)
            assert isinstance(answer, ReplyDelivery)
            assert not answer.timed_out and not answer.success
            assert answer.fault.startswith("no responders: ")


async def test_beyond_the_pending_limit_a_clients_requests_wait() -> None:
    async with relay_node(RelayLimits(pending_requests=2)) as (_, relay):
        async with raw(relay, "svc") as service, raw(relay) as client:
            await client.send(*(request(i, "svc", b"%d" % i, 5000) for i in range(3)))
            first = await service.expect(RequestDelivery)
            await service.expect(RequestDelivery)
            await service.nothing_for(0.3)  # the third is not read yet
            assert isinstance(first, RequestDelivery)
            await service.send(reply(first.id, b"done"))
            third = await service.expect(RequestDelivery)
            assert isinstance(third, RequestDelivery) and third.request == b"2"


# ------------------------------------------------------ broadcast, pub/sub


async def test_a_broadcast_reaches_every_member_connection_including_the_sender() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "b") as one, raw(relay, "b") as two, raw(relay) as plain:
            await one.send(broadcast("b", b"hello"))
            assert await one.expect(BroadcastDelivery) == BroadcastDelivery(b"hello")
            assert await two.expect(BroadcastDelivery) == BroadcastDelivery(b"hello")
            await plain.nothing_for(0.2)


async def test_subscriptions_deliver_events_and_mistakes_do_not_disconnect() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay) as subscriber, raw(relay, "any") as other, raw(relay) as publisher:
            await subscriber.send(subscribe("news"), subscribe("news"), subscribe("sport"))
            await other.send(subscribe("news"))
            await subscriber.barrier()
            await other.barrier()
            await publisher.send(publish("news", b"n1"), publish("sport", b"s1"))
            got = {await subscriber.expect(Publish), await subscriber.expect(Publish)}
            assert got == {Publish("news", b"n1"), Publish("sport", b"s1")}  # news once only
            assert await other.expect(Publish) == Publish("news", b"n1")
            await subscriber.send(unsubscribe("weather"), unsubscribe("news"))
            await subscriber.barrier()
            await publisher.send(publish("news", b"n2"), publish("sport", b"s2"))
            assert await subscriber.expect(Publish) == Publish("sport", b"s2")
            assert await other.expect(Publish) == Publish("news", b"n2")
            await subscriber.nothing_for(0.2)
        assert relay.statistics().protocol_violations == 0


async def test_a_subscriber_that_does_not_read_stalls_nobody() -> None:
    limits = RelayLimits(queued_bytes=64 * 1024, event_buffer=64)
    async with relay_node(limits) as (_, relay):
        async with raw(relay) as stalled, raw(relay) as reader, raw(relay) as publisher:
            await stalled.send(subscribe("t"))
            await reader.send(subscribe("t"))
            await stalled.barrier()
            await reader.barrier()
            count, event = 3000, b"e" * 1024

            async def read_all() -> None:
                for i in range(count):
                    packet = await reader.expect(Publish, timeout=20)
                    assert isinstance(packet, Publish) and packet.event == event, i

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                for _ in range(count):
                    await publisher.send(publish("t", event))
            assert relay.statistics().events_dropped > 0  # the stalled one's, counted


# ------------------------------------------------------------------ tunnels


async def _open_tunnel(client: Raw, service: Raw, grant: int = 64 << 20) -> tuple[int, int]:
    """Open a tunnel client -> service; returns (client's id, service's id)."""
    await client.send(tunnel_init(11, "t", 5000))
    build = await service.expect(TunnelBuild)
    assert isinstance(build, TunnelBuild) and build.chunk_limit == 65536
    await service.send(tunnel_confirm(build.build_id, 22))
    assert await client.expect(TunnelConfirmed) == TunnelConfirmed(11, False, 65536)
    assert await client.expect(TunnelAllow) == TunnelAllow(11, 4 * 1024 * 1024)
    assert await service.expect(TunnelAllow) == TunnelAllow(22, 4 * 1024 * 1024)
    await client.send(tunnel_allow(11, grant))
    await service.send(tunnel_allow(22, grant))
    return 11, 22


async def test_a_16_mib_tunnel_message_travels_in_64_kib_chunks_within_the_allowance() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "t") as service, raw(relay) as client:
            mine, theirs = await _open_tunnel(client, service)
            message = bytes(range(256)) * (16 * 4096)
            allowance, sent = 4 * 1024 * 1024, 0

            async def send_all() -> None:
                nonlocal allowance, sent
                while sent < len(message):
                    while allowance < 65536:  # the relay refills as it forwards
                        packet = await client.expect(TunnelAllow, timeout=10)
                        assert isinstance(packet, TunnelAllow)
                        allowance += packet.allowance
                    piece = message[sent : sent + 65536]
                    size = len(message) if sent == 0 else 0
                    await client.send(tunnel_transfer(mine, size, piece))
                    allowance -= len(piece)
                    sent += len(piece)

            received = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                while len(received) < len(message):
                    chunk = await service.expect(TunnelTransfer, timeout=10)
                    assert isinstance(chunk, TunnelTransfer) and chunk.tunnel_id == theirs
                    assert chunk.size == (len(message) if not received else 0)
                    assert 0 < len(chunk.chunk) <= 65536
                    received += chunk.chunk
            assert bytes(received) == message


async def test_the_node_stops_at_the_allowance_finishes_a_started_message_and_resumes() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "t") as service, raw(relay) as client:
            mine, theirs = await _open_tunnel(client, service, grant=100_000)
            for tag in b"abc":
                message = bytes([tag]) * 60_000
                await client.send(tunnel_transfer(mine, 60_000, message))
            got = []
            for _ in range(2):  # 60,000 fits; the second starts with 40,000 left and goes whole
                chunk = await service.expect(TunnelTransfer)
                assert isinstance(chunk, TunnelTransfer) and chunk.size == 60_000
                got.append(chunk.chunk[:1])
            await service.nothing_for(0.3)  # allowance spent: the third waits
            await service.send(tunnel_allow(theirs, 120_000))
            chunk = await service.expect(TunnelTransfer)
            assert isinstance(chunk, TunnelTransfer)
            got.append(chunk.chunk[:1])
            assert got == [b"a", b"b", b"c"]


async def test_an_incomplete_message_is_discarded_when_a_new_one_starts() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "t") as service, raw(relay) as client:
            mine, _theirs = await _open_tunnel(client, service)
            await client.send(tunnel_transfer(mine, 100_000, b"p" * 65536))  # then gives up
            await client.send(tunnel_transfer(mine, 10, b"0123456789"))
            chunk = await service.expect(TunnelTransfer)
            assert chunk == TunnelTransfer(_theirs, 10, b"0123456789")
            returned = 0
            while returned < 65536 + 10:
                allow = await client.expect(TunnelAllow)
                assert isinstance(allow, TunnelAllow)
                returned += allow.allowance
            assert returned == 65536 + 10
            await service.nothing_for(0.2)


async def test_closing_a_tunnel_delivers_what_was_sent_then_closes_both_ends() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "t") as service, raw(relay) as client:
            mine, theirs = await _open_tunnel(client, service)
            await client.send(tunnel_transfer(mine, 3, b"end"), tunnel_close(mine))
            assert await service.expect(TunnelTransfer) == TunnelTransfer(theirs, 3, b"end")
            assert await service.expect(TunnelClosed) == TunnelClosed(theirs, "")
            packets = [await client.next(), await client.next()]
            assert TunnelClosed(mine, "") in packets


async def test_a_tunnel_to_nobody_times_out_and_an_unconfirmed_build_is_dropped() -> None:
    limits = RelayLimits(confirm_timeout=0.3)
    async with relay_node(limits) as (_, relay):
        async with raw(relay, "t") as service, raw(relay) as client:
            await client.send(tunnel_init(5, "nobody", 2000))
            assert await client.expect(TunnelConfirmed) == TunnelConfirmed(5, True)
            await client.send(tunnel_init(6, "t", 3000))
            build = await service.expect(TunnelBuild)  # never confirmed in time
            assert isinstance(build, TunnelBuild)
            answer = await client.next(timeout=6)
            assert answer == TunnelConfirmed(6, True) or isinstance(answer, TunnelConfirmed)
            await trio.sleep(0.4)
            await service.send(tunnel_confirm(build.build_id, 9))
            assert isinstance(await service.expect(TunnelClosed), TunnelClosed)


# ---------------------------------------------------------- ends and errors


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"\x05" + varint(1) + b"\x02", "bool must be 0 or 1"),
        (b"\x0e", "unknown opcode 0x0e"),
        (b"\x01" + string("iris-relay-magic") + string("no"), "unknown opcode 0x01"),  # node's
        (b"\x0b" + b"\x80" * 11, "varint longer than"),
        (b"\x08" + string("t") + varint(1 << 40), "exceeds"),
        (init(), "unexpected ClientInit"),  # a second INIT
    ],
)
async def test_malformed_input_closes_that_connection_only(garbage: bytes, why: str) -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "svc") as service, raw(relay) as bad, raw(relay) as good:
            await bad.send(garbage)
            rest = await bad.closed()
            assert len(rest) == 1 and isinstance(rest[0], NodeClose)
            assert rest[0].reason.startswith("protocol violation")
            assert (
                why.split(maxsplit=1)[0] in rest[0].reason
                or why in rest[0].reason
                or why == "expected"
            )
            await good.send(request(1, "svc", b"still here", 2000))
            delivered = await service.expect(RequestDelivery)
            assert isinstance(delivered, RequestDelivery)
            await service.send(reply(delivered.id, b"yes"))
            assert await good.expect(ReplyDelivery) == ReplyDelivery(1, False, True, reply=b"yes")
        assert relay.statistics().protocol_violations == 1


@pytest.mark.parametrize(
    "packet",
    [broadcast("", b"x"), publish("", b"x"), subscribe(""), broadcast("c" * 1025, b"x")],
    ids=["broadcast", "publish", "subscribe", "long-cluster"],
)
async def test_a_name_the_node_refuses_is_a_violation_where_nothing_answers(
    packet: bytes,
) -> None:
    async with relay_node() as (_, relay):
        async with raw(relay) as bad:
            await bad.send(packet)
            rest = await bad.closed()
            assert len(rest) == 1 and isinstance(rest[0], NodeClose)
            assert rest[0].reason.startswith("protocol violation: a ")
            assert "name must" in rest[0].reason
        assert relay.statistics().protocol_violations == 1


async def test_a_name_the_node_refuses_is_answered_where_the_protocol_can() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay) as client:
            await client.send(request(1, "", b"?", 2000), tunnel_init(2, "", 2000))
            # Each is answered by a task of its own: in either order.
            answers = {
                type(packet): packet for packet in [await client.next(), await client.next()]
            }
            answer = answers[ReplyDelivery]
            assert isinstance(answer, ReplyDelivery) and not answer.success
            assert answer.fault == "ConfigError: a cluster name must not be empty"
            assert answers[TunnelConfirmed] == TunnelConfirmed(2, True)
        async with await trio.open_tcp_stream("127.0.0.1", relay.port) as stream:
            denied = Raw(stream)
            await denied.send(init("c" * 1025))
            (deny,) = await denied.closed()
            assert isinstance(deny, Deny) and deny.reason.startswith("Invalid cluster name: ")
        assert relay.statistics().denied == 1
        assert relay.statistics().protocol_violations == 0


async def test_close_finishes_in_flight_requests_then_confirms() -> None:
    async with relay_node() as (_, relay):
        async with raw(relay, "svc") as service, raw(relay) as client:
            await client.send(request(1, "svc", b"q", 5000), CLOSE)
            delivered = await service.expect(RequestDelivery)
            assert isinstance(delivered, RequestDelivery)
            await trio.sleep(0.1)
            await service.send(reply(delivered.id, b"a"))
            assert await client.closed() == [
                ReplyDelivery(1, False, True, reply=b"a"),
                NodeClose(""),
            ]
        assert relay.statistics().closed_gracefully == 1


async def test_a_client_that_vanishes_releases_everything_it_held() -> None:
    async with relay_node() as (node, relay), raw(relay) as client:
        service_stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        service = Raw(service_stream)
        await service.send(init("gone"), subscribe("topic"))
        await service.expect(NodeInit)
        await service.barrier()
        mine, _ = await _open_tunnel_to(client, service, "gone")
        await client.send(request(1, "gone", b"q", 5000))
        await service.expect(RequestDelivery)
        await service_stream.aclose()  # no CLOSE: it just disappears
        answers = [await client.next(), await client.next()]
        assert ReplyDelivery(1, False, False, fault="the member stopped before answering") in (
            answers
        )
        closed = [p for p in answers if isinstance(p, TunnelClosed)]
        assert closed and closed[0].tunnel_id == mine and closed[0].reason
        with trio.fail_after(5):
            while relay.statistics().connections_open != 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await client.send(request(2, "gone", b"q", 2000))
        answer = await client.expect(ReplyDelivery)
        assert isinstance(answer, ReplyDelivery) and answer.fault.startswith("no responders")
        statistics = node.statistics()
        assert statistics.tunnels_open == 0
        assert node._pubsub.receivers == 0
        assert node._responder.receivers == 0
        assert node._tunnels.receivers == 0


async def _open_tunnel_to(client: Raw, service: Raw, cluster: str) -> tuple[int, int]:
    await client.send(tunnel_init(31, cluster, 5000))
    build = await service.expect(TunnelBuild)
    assert isinstance(build, TunnelBuild)
    await service.send(tunnel_confirm(build.build_id, 32))
    assert await client.expect(TunnelConfirmed) == TunnelConfirmed(31, False, 65536)
    await client.expect(TunnelAllow)
    await service.expect(TunnelAllow)
    return 31, 32


async def test_stopping_the_relay_sends_every_client_close_with_a_reason() -> None:
    async with iris_trio.join(discovery="off") as node, trio.open_nursery() as nursery:
        relay: Relay = await nursery.start(serve_relay, node, 0)
        async with raw(relay) as one, raw(relay, "svc") as two:
            nursery.cancel_scope.cancel()
            assert await one.closed() == [NodeClose("the node is shutting down")]
            assert await two.closed() == [NodeClose("the node is shutting down")]


async def test_beyond_the_tunnel_limit_an_opening_is_refused_at_once() -> None:
    async with relay_node(RelayLimits(tunnels=1)) as (_, relay):
        async with raw(relay, "t") as service, raw(relay) as client:
            await _open_tunnel(client, service)  # the one allowed
            await client.send(tunnel_init(12, "t", 5000))
            assert await client.expect(TunnelConfirmed, timeout=1) == TunnelConfirmed(12, True)
            await service.nothing_for(0.2)  # no build reached the service

"""Secure links over memory streams: delivery, batching, backpressure, liveness, closing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from iris_trio.crypto import DEV_NETWORK, Network, NetworkKey, NodeIdentity
from iris_trio.errors import HandshakeError, MessageTooLargeError, ProtocolError
from iris_trio.testing import memory_link_pair
from iris_trio.transport import (
    Link,
    LinkConfig,
    LinkListener,
    SecureStream,
    connect_tcp_link,
    open_link,
    perform_handshake,
    serve_tcp_links,
)
from iris_trio.transport.link import _EAGER_FRAMES, PeerSilentError, WriteTimeoutError
from iris_trio.wire import Frame, FrameCodec, Payload
from iris_trio.wire.framing import frame_prefix

from .helpers import HELLO, secure_over

CODEC = FrameCodec()


async def test_frames_arrive_in_order_with_authenticated_identities() -> None:
    left_id, right_id = NodeIdentity.generate(), NodeIdentity.generate()
    async with memory_link_pair(identities=(left_id, right_id)) as (left, right):
        assert left.peer_id == right_id.node_id
        assert right.peer_id == left_id.node_id
        assert left.handshake_hash == right.handshake_hash
        for i in range(500):
            await left.send(Payload(i, os.urandom(i)))
        for i in range(500):
            frame = await right.receive()
            assert isinstance(frame, Payload) and frame.channel == i and len(frame.data) == i
        await right.send(Payload(0, b"back"))
        assert await left.receive() == Payload(0, b"back")


async def test_queued_frames_share_records() -> None:
    async with memory_link_pair() as (left, right):
        for i in range(2000):
            left.send_nowait(Payload(i, bytes(100)))
        for _ in range(2000):
            await right.receive()
        stats = left.statistics()
        assert stats.frames_sent == 2000
        assert stats.records_sent < 2000 // 50  # hundreds of frames per record


async def test_large_frames_are_chunked_into_records() -> None:
    data = os.urandom(8 * 1024 * 1024)
    async with memory_link_pair() as (left, right):
        await left.send(Payload(1, data))
        frame = await right.receive()
        assert isinstance(frame, Payload) and frame.data == data
        assert left.statistics().records_sent >= len(data) // 65535


async def test_oversize_frames_are_refused_locally() -> None:
    config = LinkConfig(max_frame_size=4096)
    async with memory_link_pair(config=config) as (left, _):
        with pytest.raises(MessageTooLargeError):
            await left.send(Payload(1, bytes(5000)))
        assert left.is_open


async def test_push_mode_delivers_synchronously_to_the_callback() -> None:
    seen: list[Frame] = []
    all_seen = trio.Event()

    def consume(link: Link, frame: Frame) -> None:
        seen.append(frame)
        if len(seen) == 10:
            all_seen.set()

    async with memory_link_pair(on_frame=(None, consume)) as (left, right):
        for i in range(10):
            await left.send(Payload(i, b""))
        with trio.fail_after(1):
            await all_seen.wait()
        assert [f.channel for f in seen] == list(range(10))  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError):
            await right.receive()


async def test_backpressure_bounds_the_queue_and_loses_nothing() -> None:
    """A receiver that stops reading makes senders wait; nothing is dropped."""
    config = LinkConfig(send_queue_frames=16, receive_queue_frames=4, write_timeout=60)
    left_stream, right_stream = trio.testing.lockstep_stream_pair()
    links: dict[str, Link] = {}
    sent = 0
    done = trio.Event()

    async def sender() -> None:
        nonlocal sent
        async with open_link(
            left_stream,
            initiator=True,
            identity=NodeIdentity.generate(),
            network=DEV_NETWORK,
            config=config,
        ) as link:
            links["left"] = link
            for i in range(200):
                await link.send(Payload(i, bytes(1000)))
                sent += 1
            await done.wait()

    async def receiver() -> None:
        async with open_link(
            right_stream,
            initiator=False,
            identity=NodeIdentity.generate(),
            network=DEV_NETWORK,
            config=config,
        ) as link:
            links["right"] = link
            await trio.sleep(1)  # do not read yet
            assert sent < 200
            assert links["left"].statistics().queued_frames <= 16
            for i in range(200):
                frame = await link.receive()
                assert isinstance(frame, Payload) and frame.channel == i
            done.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
    assert sent == 200


async def test_idle_links_stay_up_on_keepalives(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_link_pair() as (left, right):
        await trio.sleep(120)
        assert left.is_open and right.is_open
        assert left.statistics().keepalives_sent >= 100
        await left.send(Payload(1, b"still here"))
        assert await right.receive() == Payload(1, b"still here")


@asynccontextmanager
async def link_and_raw_peer(
    config: LinkConfig | None = None,
    streams: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = (
        trio.testing.memory_stream_pair
    ),
) -> AsyncIterator[tuple[Link, SecureStream]]:
    """A link whose peer is a bare secure stream the test drives by hand."""
    ours, theirs = streams()
    raw: dict[str, SecureStream] = {}
    ready = trio.Event()

    async def raw_peer() -> None:
        result = await perform_handshake(
            theirs,
            initiator=False,
            identity=NodeIdentity.generate(),
            network=DEV_NETWORK,
            hello=HELLO,
            timeout=3,
        )
        raw["peer"] = secure_over(theirs, result)
        ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw_peer)
        async with open_link(
            ours,
            initiator=True,
            identity=NodeIdentity.generate(),
            network=DEV_NETWORK,
            config=config,
        ) as link:
            await ready.wait()
            yield link, raw["peer"]


async def test_silent_peer_is_declared_dead(autojump_clock: trio.testing.MockClock) -> None:
    async with link_and_raw_peer(LinkConfig(keepalive_interval=1, idle_timeout=5)) as (link, _):
        start = trio.current_time()
        await link.wait_closed()
        assert isinstance(link.close_reason, PeerSilentError)
        assert 5 <= trio.current_time() - start < 6
        with pytest.raises(trio.BrokenResourceError):
            await link.receive()
        with pytest.raises(trio.BrokenResourceError):
            await link.send(Payload(1, b""))


async def test_stalled_writes_break_the_link(autojump_clock: trio.testing.MockClock) -> None:
    config = LinkConfig(write_timeout=4, idle_timeout=1000, keepalive_interval=1)
    async with link_and_raw_peer(config, trio.testing.lockstep_stream_pair) as (link, _):
        link.send_nowait(Payload(1, bytes(100_000)))  # the peer never reads
        await link.wait_closed()
        assert isinstance(link.close_reason, WriteTimeoutError)


@pytest.mark.parametrize(
    "garbage",
    [
        frame_prefix(5) + b"\xff\xff\xff\xff\xff",  # not CBOR
        frame_prefix(3) + bytes([0x83, 0x01, 0x63]),  # truncated array
        frame_prefix(2**31),  # declared frame above the limit
        frame_prefix(4) + CODEC.encode(Payload(1, b""))[:4],  # wrong kind of content
    ],
    ids=["not-cbor", "truncated", "oversize", "short"],
)
async def test_malformed_frames_close_only_that_link(garbage: bytes) -> None:
    async with link_and_raw_peer() as (link, raw):
        good = CODEC.encode(Payload(7, b"fine"))
        await raw.send_all(frame_prefix(len(good)) + good + garbage)
        assert await link.receive() == Payload(7, b"fine")
        with pytest.raises(trio.BrokenResourceError):
            await link.receive()
        assert isinstance(link.close_reason, ProtocolError)


async def test_protocol_error_from_the_consumer_closes_the_link() -> None:
    def picky(link: Link, frame: Frame) -> None:
        raise ProtocolError("semantically invalid")

    async with memory_link_pair(on_frame=(None, picky)) as (left, right):
        await left.send(Payload(1, b""))
        await right.wait_closed()
        assert isinstance(right.close_reason, ProtocolError)
        await left.wait_closed()


async def test_graceful_close_flushes_and_ends_cleanly() -> None:
    async with memory_link_pair() as (left, right):
        for i in range(100):
            left.send_nowait(Payload(i, bytes(10)))
        await left.aclose()
        received = [frame async for frame in right]  # ends at EndOfChannel
        assert [f.channel for f in received] == list(range(100))  # type: ignore[attr-defined]
        with pytest.raises(trio.EndOfChannel):
            await right.receive()
        assert right.close_reason is None
        with pytest.raises(trio.BrokenResourceError):
            await right.send(Payload(0, b""))
        with pytest.raises(trio.ClosedResourceError):
            left.send_nowait(Payload(0, b""))


async def test_pending_operations_fail_with_closed_resource_after_aclose() -> None:
    config = LinkConfig(send_queue_frames=1, write_timeout=60)
    async with link_and_raw_peer(config, trio.testing.lockstep_stream_pair) as (link, _):
        results: list[type[BaseException]] = []

        async def expect(op: Callable[[], object]) -> None:
            try:
                await op()  # type: ignore[misc]
            except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                results.append(type(exc))

        link.send_nowait(Payload(1, bytes(10_000)))  # stuck in the unread lockstep stream
        await trio.testing.wait_all_tasks_blocked()
        link.send_nowait(Payload(2, b""))  # fills the one-frame queue
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect, link.receive)
            nursery.start_soon(expect, lambda: link.send(Payload(2, b"")))
            nursery.start_soon(expect, lambda: link.send(Payload(3, b"")))
            await trio.testing.wait_all_tasks_blocked()
            await link.aclose()
        assert results == [trio.ClosedResourceError] * 3


@pytest.mark.parametrize(
    "other",
    [
        Network(DEV_NETWORK.name, NetworkKey.generate()),
        Network("another-network", DEV_NETWORK.key),
        Network(DEV_NETWORK.name, DEV_NETWORK.key, protocol="iris-trio/2"),
    ],
    ids=["wrong-key", "wrong-name", "wrong-version"],
)
async def test_mismatched_networks_fail_on_both_sides_within_the_deadline(
    other: Network, autojump_clock: trio.testing.MockClock
) -> None:
    left, right = trio.testing.memory_stream_pair()
    errors: list[BaseException] = []
    accepted: list[Link] = []

    async def side(stream: trio.abc.Stream, initiator: bool, network: Network) -> None:
        try:
            async with open_link(
                stream, initiator=initiator, identity=NodeIdentity.generate(), network=network
            ) as link:
                accepted.append(link)
        except HandshakeError as exc:
            errors.append(exc)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, left, True, DEV_NETWORK)
        nursery.start_soon(side, right, False, other)
    assert len(errors) == 2 and not accepted
    assert trio.current_time() - start < LinkConfig().handshake_timeout


async def test_a_silent_peer_is_cut_at_the_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, _theirs = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(HandshakeError, match="within"):
        async with open_link(
            ours, initiator=False, identity=NodeIdentity.generate(), network=DEV_NETWORK
        ):
            pass
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_user_exceptions_leave_the_link_unwrapped() -> None:
    class BoomError(Exception):
        pass

    with pytest.raises(BoomError):
        async with memory_link_pair() as (left, _):
            await left.send(Payload(1, b""))
            raise BoomError


class _Tamperer(trio.abc.Stream):
    """Forwards a stream but flips one bit at a chosen byte offset of what it sends."""

    def __init__(self, inner: trio.abc.Stream, flip_at: int) -> None:
        self.inner = inner
        self.flip_at = flip_at
        self.sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytearray(data)
        if self.sent <= self.flip_at < self.sent + len(chunk):
            chunk[self.flip_at - self.sent] ^= 0x01
        self.sent += len(chunk)
        await self.inner.send_all(chunk)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_tampered_record_closes_the_link_and_nothing_after_it_arrives() -> None:
    left, right = trio.testing.memory_stream_pair()
    # The handshake is 48 + 2 bytes then 2 + 150-ish; flip a byte well inside the records.
    tampered = _Tamperer(left, flip_at=5_000)
    received: list[int] = []

    async def sender() -> None:
        async with open_link(
            tampered, initiator=True, identity=NodeIdentity.generate(), network=DEV_NETWORK
        ) as link:
            with pytest.raises(trio.BrokenResourceError):
                for i in range(100):
                    await link.send(Payload(i, bytes(200)))
                    await trio.sleep(0.001)  # one record per frame
                await link.receive()
            # The receiver aborted: this side sees a broken link, not a clean end.
            assert link.close_reason is not None

    async def receiver() -> None:
        async with open_link(
            right, initiator=False, identity=NodeIdentity.generate(), network=DEV_NETWORK
        ) as link:
            with pytest.raises(trio.BrokenResourceError):
                while True:
                    frame = await link.receive()
                    assert isinstance(frame, Payload)
                    received.append(frame.channel)
            assert isinstance(link.close_reason, ProtocolError)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
    assert received == list(range(len(received)))  # an unbroken prefix, in order
    assert 0 < len(received) < 100


async def test_the_start_of_a_burst_is_written_at_once_and_the_rest_follows_in_order() -> None:
    """Over TCP: frames queued in one scheduler turn (e.g. 64 requests) go out
    in two parts: the first _EAGER_FRAMES at once, from the sender (so the peer
    starts on them while this side makes the rest), then the rest with the
    writer; the peer gets all of them, in order."""
    network = Network("link-burst-" + os.urandom(4).hex(), NetworkKey.generate())
    received: list[int] = []
    done = trio.Event()

    async def take(link: Link) -> None:
        while len(received) < 64:
            frame = await link.receive()
            assert isinstance(frame, Payload)
            received.append(frame.channel)
        done.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listener: LinkListener = await nursery.start(
            lambda task_status: serve_tcp_links(
                take, 0, identity=NodeIdentity.generate(), network=network, task_status=task_status
            )
        )
        port = int(listener.listen.rsplit(":", 1)[1])
        async with connect_tcp_link(
            "127.0.0.1", port, identity=NodeIdentity.generate(), network=network
        ) as link:
            await trio.sleep(0.05)  # (the link is quiet: the first frame is written at once)
            before = link.statistics().bytes_sent
            for channel in range(64):  # one turn: no checkpoint
                link.send_nowait(Payload(channel, b"x" * 40))
            written = link.statistics().bytes_sent - before
            # The first frame (a quiet link) and the first part of the burst.
            assert written >= (1 + _EAGER_FRAMES) * 40
            assert link.statistics().queued_frames == 64 - 1 - _EAGER_FRAMES
            with trio.fail_after(5):
                await done.wait()
        nursery.cancel_scope.cancel()
    assert received == list(range(64))


async def test_a_stream_over_tcp_arrives_whole_and_in_order_when_the_socket_fills() -> None:
    """The writer writes straight to the socket; when the peer reads late the
    socket fills, the rest of a write waits, and nothing is lost or reordered."""
    network = Network("link-stream-" + os.urandom(4).hex(), NetworkKey.generate())
    count, size = 2000, 16 * 1024  # 32 MiB: more than the socket buffers hold
    received: list[tuple[int, bytes]] = []
    done = trio.Event()

    async def take(link: Link) -> None:
        await trio.sleep(0.3)  # the sender's socket fills meanwhile
        while len(received) < count:
            frame = await link.receive()
            assert isinstance(frame, Payload)
            received.append((frame.channel, frame.data))
        done.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listener: LinkListener = await nursery.start(
            lambda task_status: serve_tcp_links(
                take, 0, identity=NodeIdentity.generate(), network=network, task_status=task_status
            )
        )
        port = int(listener.listen.rsplit(":", 1)[1])
        async with connect_tcp_link(
            "127.0.0.1", port, identity=NodeIdentity.generate(), network=network
        ) as link:
            with trio.fail_after(30):
                for channel in range(count):
                    await link.send(Payload(channel, bytes([channel % 251]) * size))
                await done.wait()
        nursery.cancel_scope.cancel()
    assert [channel for channel, _ in received] == list(range(count))
    assert all(data == bytes([channel % 251]) * size for channel, data in received)

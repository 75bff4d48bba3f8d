"""The encrypted record layer as a trio Stream, and its tamper resistance."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
import trio
import trio.testing

from iris_trio.errors import ProtocolError
from iris_trio.transport.secure_stream import (
    MAX_RECORD_PLAINTEXT,
    SecureStream,
    StreamTruncatedError,
)

from .helpers import (
    handshake_pair,
    lockstep_secure_stream_pair,
    secure_over,
    secure_stream_pair,
    socket_secure_stream_pair,
)


async def test_passes_trio_two_way_stream_checks() -> None:
    await trio.testing.check_two_way_stream(secure_stream_pair, lockstep_secure_stream_pair)


async def test_passes_trio_two_way_stream_checks_over_sockets() -> None:
    await trio.testing.check_two_way_stream(socket_secure_stream_pair, None)


async def test_messages_one_at_a_time_over_a_socket_each_arrive_in_order() -> None:
    a, b = await socket_secure_stream_pair()
    for i in range(200):  # each read empties the socket: the next waits first
        await a.send_all(b"ping %d" % i)
        assert await b.receive_some() == b"ping %d" % i
        assert a.write_now(b"pong %d" % i)
        assert await b.receive_some() == b"pong %d" % i
    data = bytes(range(256)) * 4096  # 1 MiB: several full reads in a row
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, data)
        received = bytearray()
        while len(received) < len(data):
            received += await b.receive_some()
    assert received == data


async def _close_and_reuse(stream: SecureStream) -> list[trio.socket.SocketType]:
    """Close the socket under ``stream`` (as a link does when it gives up),
    then make a new socket pair, which likely gets its number, with data in it."""
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream)
    fd = transport.socket.fileno()
    await trio.aclose_forcefully(transport)
    others = list(trio.socket.socketpair())
    await others[1].send(b"not for this stream")
    assert fd in (others[0].fileno(), others[1].fileno())  # (the case this guards)
    return others


@pytest.mark.parametrize("waiting", [True, False])
async def test_a_socket_closed_under_the_reader_is_never_read_again(waiting: bool) -> None:
    a, b = await socket_secure_stream_pair()
    if waiting:  # the reader waits for data when the socket is closed
        await a.send_all(b"first")
        assert await b.receive_some() == b"first"
    outcomes: list[object] = []
    others: list[trio.socket.SocketType] = []

    async def receive() -> None:
        try:
            with trio.fail_after(5):  # (a read of the other socket waits for a record)
                outcomes.append(await b.receive_some())
        except (trio.ClosedResourceError, trio.TooSlowError) as exc:
            outcomes.append(exc)

    async def close() -> None:
        if waiting:
            await trio.testing.wait_all_tasks_blocked()
        others.extend(await _close_and_reuse(b))

    if waiting:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            nursery.start_soon(close)
    else:  # closed before the read: the socket's number now names another one
        await close()
        await receive()
    assert len(outcomes) == 1 and isinstance(outcomes[0], trio.ClosedResourceError)
    with pytest.raises(trio.ClosedResourceError):
        await b.receive_some()
    assert await others[0].recv(100) == b"not for this stream"  # left where it was
    for sock in others:
        sock.close()


async def test_a_reset_connection_breaks_the_reader() -> None:
    a, b = await socket_secure_stream_pair()
    await a.send_all(b"first")
    assert await b.receive_some() == b"first"
    transport = a.transport_stream
    assert isinstance(transport, trio.SocketStream)
    transport.socket.setsockopt(
        trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    await trio.aclose_forcefully(transport)
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_some()


async def test_large_writes_are_cut_into_records_and_reassembled() -> None:
    a, b = await secure_stream_pair()
    data = bytes(range(256)) * 1024  # 256 KiB
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, data)
        received = bytearray()
        while len(received) < len(data):
            received += await b.receive_some()
    assert bytes(received) == data
    assert a.records_sent == -(-len(data) // MAX_RECORD_PLAINTEXT)


async def test_clean_close_is_an_authenticated_end_of_stream() -> None:
    a, b = await secure_stream_pair()
    await a.send_all(b"last words")
    await a.aclose()
    assert await b.receive_some() == b"last words"
    assert await b.receive_some() == b""


async def test_rekeying_keeps_both_directions_in_step() -> None:
    a, b = await secure_stream_pair(rekey_interval=3)
    for i in range(20):
        await a.send_all(b"ping %d" % i)
        assert await b.receive_some() == b"ping %d" % i
        await b.send_all(b"pong %d" % i)
        assert await a.receive_some() == b"pong %d" % i


async def test_rekey_schedules_that_differ_fail_authentication() -> None:
    left, right = trio.testing.memory_stream_pair()
    ra, rb = await handshake_pair(left, right)
    a = secure_over(left, ra, rekey_interval=2)
    b = secure_over(right, rb, rekey_interval=1000)
    for _ in range(2):
        await a.send_all(b"x")
        assert await b.receive_some() == b"x"
    await a.send_all(b"y")  # a rekeyed, b did not
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_some()


class _Tap(trio.abc.Stream):
    """A transport that records what is sent and replays scripted bytes on receive."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.incoming = bytearray()
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        data = bytes(self.incoming)
        self.incoming.clear()
        return data

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def _split_records(wire: bytes) -> list[bytes]:
    records = []
    while wire:
        (size,) = struct.unpack_from(">H", wire)
        records.append(wire[: 2 + size])
        wire = wire[2 + size :]
    return records


async def _recorded_records(count: int) -> tuple[SecureStream, list[bytes]]:
    """A receiving stream, and ``count`` records a matching sender produced."""
    left, right = trio.testing.memory_stream_pair()
    ra, rb = await handshake_pair(left, right)
    sender_tap = _Tap()
    sender = secure_over(sender_tap, ra)
    for i in range(count):
        await sender.send_all(b"record %d" % i)
    receiver = secure_over(_Tap(), rb)
    return receiver, _split_records(bytes(sender_tap.sent))


async def _deliver(receiver: SecureStream, wire: bytes) -> tuple[list[bytes], BaseException | None]:
    receiver.transport_stream.incoming += wire  # type: ignore[attr-defined]
    out: list[bytes] = []
    try:
        while True:
            data = await receiver.receive_some()
            if not data:
                return out, None
            out.append(bytes(data))
    except trio.BrokenResourceError as exc:
        return out, exc


@pytest.mark.parametrize(
    ("mangle", "good", "cause"),
    [
        pytest.param(
            lambda r: [r[0], r[1][:-1] + bytes([r[1][-1] ^ 1]), r[2]],
            1,
            ProtocolError,
            id="tampered",
        ),
        pytest.param(lambda r: [r[0], r[0], r[1]], 1, ProtocolError, id="replayed"),
        pytest.param(lambda r: [r[0], r[1], r[1], r[2]], 2, ProtocolError, id="duplicated"),
        pytest.param(lambda r: [r[0], r[2], r[1]], 1, ProtocolError, id="reordered"),
        pytest.param(lambda r: [r[0], r[1][:-3]], 1, StreamTruncatedError, id="truncated"),
        pytest.param(
            lambda r: [r[0], struct.pack(">H", 9) + b"plaintext", r[1]],
            1,
            ProtocolError,
            id="plaintext",
        ),
    ],
)
async def test_bad_record_breaks_the_stream_and_nothing_after_it_is_delivered(
    mangle: Callable[[list[bytes]], list[bytes]], good: int, cause: type[Exception]
) -> None:
    receiver, records = await _recorded_records(3)
    received, error = await _deliver(receiver, b"".join(mangle(records)))
    assert b"".join(received) == b"".join(b"record %d" % i for i in range(good))
    assert isinstance(error, trio.BrokenResourceError)
    # A cut-off last record is a truncated stream; everything else is a forgery.
    assert isinstance(error.__cause__, cause)
    with pytest.raises(trio.BrokenResourceError):
        await receiver.receive_some()


async def test_truncated_connection_is_not_a_clean_end() -> None:
    a, b = await secure_stream_pair()
    await a.send_all(b"partial")
    await a.transport_stream.aclose()  # no authenticated end record
    assert await b.receive_some() == b"partial"
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    assert "truncated" in str(info.value.__cause__)


async def test_nonce_exhaustion_is_a_hard_stop() -> None:
    a, _ = await secure_stream_pair()
    a._send_cipher.nonce = 2**64 - 1
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"one too many")
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"and never again")

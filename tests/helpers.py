"""Helpers for tests: secure stream pairs over memory streams."""

from __future__ import annotations

import trio
import trio.testing

from iris_trio.crypto import DEV_NETWORK, Network, NodeIdentity
from iris_trio.transport.handshake import HandshakeResult, perform_handshake
from iris_trio.transport.secure_stream import SecureStream
from iris_trio.wire import Hello

HELLO = Hello(software="test", listen="", max_frame_size=1 << 20)


async def handshake_pair(
    left: trio.abc.Stream,
    right: trio.abc.Stream,
    *,
    networks: tuple[Network, Network] = (DEV_NETWORK, DEV_NETWORK),
    timeout: float = 3.0,
) -> tuple[HandshakeResult, HandshakeResult]:
    """Run both sides of a handshake concurrently and return both results."""
    results: dict[bool, HandshakeResult] = {}

    async def side(stream: trio.abc.Stream, initiator: bool, network: Network) -> None:
        results[initiator] = await perform_handshake(
            stream,
            initiator=initiator,
            identity=NodeIdentity.generate(),
            network=network,
            hello=HELLO,
            timeout=timeout,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, left, True, networks[0])
        nursery.start_soon(side, right, False, networks[1])
    return results[True], results[False]


def secure_over(stream: trio.abc.Stream, result: HandshakeResult, **kwargs: int) -> SecureStream:
    return SecureStream(
        stream,
        result.send_cipher,
        result.receive_cipher,
        record_reader=result.record_reader,
        pending_records=result.pending_records,
        **kwargs,
    )


async def secure_stream_pair(**kwargs: int) -> tuple[SecureStream, SecureStream]:
    """Two connected secure streams over a memory stream pair."""
    left, right = trio.testing.memory_stream_pair()
    a, b = await handshake_pair(left, right)
    return secure_over(left, a, **kwargs), secure_over(right, b, **kwargs)


async def socket_secure_stream_pair(**kwargs: int) -> tuple[SecureStream, SecureStream]:
    """Two connected secure streams over a connected pair of sockets (the
    transport of real links: reads and eager writes go to the socket itself)."""
    left_socket, right_socket = trio.socket.socketpair()
    left, right = trio.SocketStream(left_socket), trio.SocketStream(right_socket)
    a, b = await handshake_pair(left, right)
    return secure_over(left, a, **kwargs), secure_over(right, b, **kwargs)


async def lockstep_secure_stream_pair() -> tuple[SecureStream, SecureStream]:
    """Secure streams over a lockstep (unbuffered) memory stream pair."""
    left, right = trio.testing.lockstep_stream_pair()
    a, b = await handshake_pair(left, right)
    return secure_over(left, a), secure_over(right, b)

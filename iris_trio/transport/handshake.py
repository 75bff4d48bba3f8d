"""The Noise handshake over a trio stream, under a deadline.

Message 1 (initiator) carries no payload; messages 2 and 3 carry each side's
:class:`~iris_trio.wire.Hello`, encrypted. A responder checks message 1 against
its network key and prologue before doing any Diffie-Hellman work, and refuses
a first message whose size cannot be one of ours (plaintext, another protocol)
without waiting for it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

import trio

from ..crypto.identity import NodeIdentity, node_id_of
from ..crypto.keys import Network
from ..crypto.noise import DH_SIZE, CipherState, HandshakeState
from ..errors import HandshakeError, ProtocolError
from ..wire.frames import FrameCodec, Hello
from ..wire.framing import MAX_RECORD_SIZE, LengthPrefixedReader, record_prefix

__all__ = ["HandshakeResult", "perform_handshake"]

log = logging.getLogger("iris_trio.transport")

_TAG: Final = 16
#: Message 1 is an ephemeral key and an empty encrypted payload (48 bytes); other
#: conforming peers may add a small payload.
_FIRST_MESSAGE_MIN: Final = DH_SIZE + _TAG
_FIRST_MESSAGE_MAX: Final = _FIRST_MESSAGE_MIN + 1024
_RECEIVE_SIZE: Final = 64 * 1024


@dataclasses.dataclass(slots=True)
class HandshakeResult:
    """What a completed handshake hands to the record layer.

    Attributes:
        send_cipher / receive_cipher: the transport cipher states.
        record_reader: the reader, holding any partial record that followed.
        pending_records: complete records that arrived with the last message.
        peer_public_key: the peer's static X25519 public key (authenticated).
        peer_id: the peer's node id (derived from its key).
        peer_hello: the peer's hello.
        handshake_hash: the Noise transcript hash (channel binding).
    """

    send_cipher: CipherState
    receive_cipher: CipherState
    record_reader: LengthPrefixedReader
    pending_records: list[bytes]
    peer_public_key: bytes
    peer_id: bytes
    peer_hello: Hello
    handshake_hash: bytes


class _MessageReader:
    """Reads whole 2-byte-prefixed Noise messages, keeping whatever follows them."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = LengthPrefixedReader(2, MAX_RECORD_SIZE)
        self.ready: list[bytes] = []

    async def next(self) -> bytes:
        while not self.ready:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise HandshakeError(
                    "the peer closed the connection during the handshake"
                    " (a different network key, network name or protocol version?)"
                )
            # Raises ProtocolError as soon as a declared length exceeds the limit.
            self.ready.extend(bytes(message) for message in self.reader.feed(data))
        return self.ready.pop(0)


def _decode_hello(payload: bytes, codec: FrameCodec) -> Hello:
    try:
        frame = codec.decode(payload)
    except ProtocolError as exc:
        raise HandshakeError(f"malformed hello: {exc}") from None
    if not isinstance(frame, Hello):
        raise HandshakeError(f"expected a hello, got {type(frame).__name__}")
    return frame


async def perform_handshake(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    identity: NodeIdentity,
    network: Network,
    hello: Hello,
    timeout: float,
    codec: FrameCodec | None = None,
) -> HandshakeResult:
    """Run the XXpsk0 handshake on ``stream`` within ``timeout`` seconds.

    Raises:
        HandshakeError: on any failure: timeout, a different key/name/version,
            a malformed message, a lost connection. The stream is left open;
            the caller closes it.
    """
    codec = codec or FrameCodec()
    state = HandshakeState(
        initiator=initiator,
        prologue=network.prologue(),
        psk=network.key.secret,
        static_private_key=identity.private_key,
        static_public_key=identity.public_key,
    )
    messages = _MessageReader(stream)
    hello_bytes = codec.encode(hello)
    peer_hello: Hello | None = None
    with trio.move_on_after(timeout) as deadline:
        try:
            if initiator:
                await _send(stream, state.write_message(b""))
                peer_hello = _decode_hello(state.read_message(await messages.next()), codec)
                await _send(stream, state.write_message(hello_bytes))
            else:
                # A stranger (plaintext, another protocol) declares a length no
                # first message has: refuse it at once rather than at the deadline.
                messages.reader.max_size = _FIRST_MESSAGE_MAX
                first = await messages.next()
                messages.reader.max_size = MAX_RECORD_SIZE
                if len(first) < _FIRST_MESSAGE_MIN:
                    raise HandshakeError("first handshake message too short: not an iris-trio peer")
                state.read_message(first)
                await _send(stream, state.write_message(hello_bytes))
                peer_hello = _decode_hello(state.read_message(await messages.next()), codec)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise HandshakeError(f"connection lost during the handshake: {exc}") from exc
        except ProtocolError as exc:
            raise HandshakeError(f"malformed handshake data: {exc}") from exc
    if deadline.cancelled_caught:
        raise HandshakeError(f"handshake did not complete within {timeout:g} s")
    assert peer_hello is not None and state.remote_static is not None
    send_cipher, receive_cipher = state.split()
    return HandshakeResult(
        send_cipher=send_cipher,
        receive_cipher=receive_cipher,
        record_reader=messages.reader,
        pending_records=messages.ready,
        peer_public_key=state.remote_static,
        peer_id=node_id_of(state.remote_static),
        peer_hello=peer_hello,
        handshake_hash=state.handshake_hash,
    )


async def _send(stream: trio.abc.Stream, message: bytes) -> None:
    await stream.send_all(record_prefix(len(message)) + message)

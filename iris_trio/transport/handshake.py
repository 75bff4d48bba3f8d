"""The Noise handshake over a trio stream, under a deadline.

Message 1 (initiator) carries no payload; messages 2 and 3 carry each side's
:class:`~iris_trio.wire.Hello`, encrypted. A responder checks message 1 against
its network key and prologue before doing any Diffie-Hellman work, and refuses
a first message whose size cannot be one of ours (plaintext, another protocol)
without waiting for it.

A failure raises :class:`~iris_trio.errors.HandshakeError` whose text names the
likely cause as far as this side can tell it (the prologue binds the network
name and protocol version and the PSK is the network key, so a peer of another
network fails on the responder's decryption of message 1, and the initiator
sees the responder close the connection). :func:`log_handshake_failure` is how
the listener and :func:`~iris_trio.transport.link.open_link` report it: one
WARNING per remote address every 30 s at most.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable
from typing import Final

import trio

from .._logs import LogLimiter
from ..crypto.identity import NodeIdentity, node_id_of
from ..crypto.keys import Network
from ..crypto.noise import DH_SIZE, CipherState, HandshakeState
from ..errors import HandshakeError, ProtocolError
from ..wire.frames import FrameCodec, Hello
from ..wire.framing import MAX_RECORD_SIZE, LengthPrefixedReader, record_prefix

__all__ = ["HandshakeResult", "log_handshake_failure", "perform_handshake"]

log = logging.getLogger("iris_trio.transport")
_log_limiter = LogLimiter()

_TAG: Final = 16
#: Message 1 is an ephemeral key and an empty encrypted payload (48 bytes); other
#: conforming peers may add a small payload.
_FIRST_MESSAGE_MIN: Final = DH_SIZE + _TAG
_FIRST_MESSAGE_MAX: Final = _FIRST_MESSAGE_MIN + 1024
_RECEIVE_SIZE: Final = 64 * 1024

# Why a handshake failed, as far as this side can tell (the HandshakeError's text).
#: The responder cannot decrypt message 1: the PSK (network key) or the prologue
#: (network name, protocol version) differs.
OTHER_NETWORK: Final = (
    "the peer uses another network key or network name"
    " (or another protocol version, or is not an iris_trio node)"
)
#: The initiator sees the responder close the connection instead of answering:
#: that is what a responder of another network does.
REFUSED: Final = (
    "the peer closed the connection during the handshake: it likely uses another"
    " network key or network name (or is not an iris_trio node, or was too busy)"
)
_NOT_IRIS: Final = "the peer is not an iris_trio node"
_NOT_ONE: Final = "it is not an iris_trio node"
_OTHER_VERSION: Final = "the peer speaks another protocol version"


class _ClosedUnspokenError(HandshakeError):
    """The connection ended before the peer sent anything: a port probe or a
    health check rather than a refused peer (logged at INFO, not WARNING)."""


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

    async def next(self, closed: str, *, first: bool = False) -> bytes:
        """The next message; HandshakeError(``closed``) if the peer closes or
        resets the connection first (before sending anything at all, when
        ``first``: a quieter error)."""
        while not self.ready:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except trio.BrokenResourceError:  # a reset: the peer closed as well
                data = b""
            if not data:
                if first and not self.reader.buffered:
                    raise _ClosedUnspokenError(closed)
                raise HandshakeError(closed)
            # Raises ProtocolError as soon as a declared length exceeds the limit.
            self.ready.extend(bytes(message) for message in self.reader.feed(data))
        return self.ready.pop(0)


_CLOSED_UNSPOKEN: Final = (
    "the peer closed the connection without sending a handshake (it is not an iris_trio node)"
)
_GAVE_UP: Final = (
    "the peer closed the connection during the handshake, after our answer"
    " (it speaks another protocol version, or it gave up)"
)


def _read(state: HandshakeState, message: bytes, failure: str) -> bytes:
    """The payload of the peer's next handshake message; HandshakeError(``failure``)
    if it does not authenticate or is malformed."""
    try:
        return state.read_message(message)
    except HandshakeError as exc:
        raise HandshakeError(f"{failure} ({exc})") from exc


def _decode_hello(payload: bytes, codec: FrameCodec) -> Hello:
    try:
        frame = codec.decode(payload)
    except ProtocolError as exc:
        raise HandshakeError(f"{_OTHER_VERSION}: its hello is malformed ({exc})") from None
    if not isinstance(frame, Hello):
        raise HandshakeError(f"{_OTHER_VERSION}: it sent {type(frame).__name__} for a hello")
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
    on_proven: Callable[[], None] | None = None,
) -> HandshakeResult:
    """Run the XXpsk0 handshake on ``stream`` within ``timeout`` seconds.

    ``on_proven`` (responder only) is called once the initiator's first message
    authenticated, i.e. the initiator holds the network key: the listener
    protects such handshakes from eviction.

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
    # What a timeout means at each step.
    if initiator:
        stalled = f"the peer did not answer within {timeout:g} s (it stalled, or {_NOT_ONE})"
    else:
        stalled = f"the peer sent no handshake within {timeout:g} s ({_NOT_ONE}, or it stalled)"
    with trio.move_on_after(timeout) as deadline:
        try:
            if initiator:
                await _send(stream, state.write_message(b""))
                answer = await messages.next(closed=REFUSED)
                payload = _read(
                    state, answer, f"the peer's answer does not authenticate: {OTHER_NETWORK}"
                )
                peer_hello = _decode_hello(payload, codec)
                stalled = f"the handshake did not complete within {timeout:g} s (the peer stalled)"
                await _send(stream, state.write_message(hello_bytes))
            else:
                # A stranger (plaintext, another protocol) declares a length no
                # first message has: refuse it at once rather than at the deadline.
                messages.reader.max_size = _FIRST_MESSAGE_MAX
                first = await messages.next(closed=_CLOSED_UNSPOKEN, first=True)
                messages.reader.max_size = MAX_RECORD_SIZE
                if len(first) < _FIRST_MESSAGE_MIN:
                    raise HandshakeError(f"{_NOT_IRIS}: its first handshake message is too short")
                try:
                    state.read_message(first)  # no Diffie-Hellman work before this passes
                except HandshakeError:
                    raise HandshakeError(OTHER_NETWORK) from None
                if on_proven is not None:
                    on_proven()
                stalled = f"the peer stalled: the handshake did not complete within {timeout:g} s"
                await _send(stream, state.write_message(hello_bytes))
                last = await messages.next(closed=_GAVE_UP)
                payload = _read(state, last, "the peer's last handshake message is invalid")
                peer_hello = _decode_hello(payload, codec)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise HandshakeError(f"the connection was lost during the handshake: {exc}") from exc
        except ProtocolError as exc:  # a declared length no handshake message has
            raise HandshakeError(f"{_NOT_IRIS}: {exc}") from exc
    if deadline.cancelled_caught:
        raise HandshakeError(stalled)
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


def log_handshake_failure(stream: trio.abc.Stream, exc: HandshakeError, *, initiator: bool) -> None:
    """Log a failed handshake on ``stream`` with its likely cause: a WARNING
    (INFO for a connection that ended before the peer said anything), at most
    one every 30 s per remote address (per host for accepted connections, whose
    source ports vary). Call it before closing the stream."""
    host, address = _peer_address(stream)
    key: Hashable = ("handshake", address if initiator else host)
    level = logging.INFO if isinstance(exc, _ClosedUnspokenError) else logging.WARNING
    _log_limiter.log(log, level, key, "link handshake with %s failed: %s", address, exc)


def _peer_address(stream: trio.abc.Stream) -> tuple[str, str]:
    """(host, "host:port") of the peer of a socket stream; ("?", "an unknown
    address") for other streams."""
    socket = getattr(stream, "socket", None)
    try:
        host, port = socket.getpeername()[:2] if socket is not None else ("", 0)
    except OSError:
        host = ""
    if not host:
        return "?", "an unknown address"
    return str(host), (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

"""The Iris relay protocol v1.0-draft2, sans-IO: every packet in both directions.

A packet is one opcode byte followed by its fields (see
``specs/relay-protocol.md``): ``varint`` (unsigned LEB128), ``bool`` (0 or 1
only), ``binary`` (varint length, then the bytes) and ``string`` (a binary of
UTF-8). Packets from the client and from the node differ for the same opcode,
so each direction has its own classes; :class:`PacketReader` parses one
direction incrementally and raises :class:`RelayProtocolError` on anything
malformed, before buffering more than a declared length allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal

from ..errors import ProtocolError

__all__ = [
    "MAGIC_CLIENT",
    "MAGIC_RELAY",
    "VERSION",
    "Broadcast",
    "BroadcastDelivery",
    "ClientClose",
    "ClientInit",
    "Deny",
    "NodeClose",
    "NodeInit",
    "Packet",
    "PacketReader",
    "Publish",
    "RelayProtocolError",
    "Reply",
    "ReplyDelivery",
    "Request",
    "RequestDelivery",
    "Subscribe",
    "TunnelAllow",
    "TunnelBuild",
    "TunnelClose",
    "TunnelClosed",
    "TunnelConfirm",
    "TunnelConfirmed",
    "TunnelInit",
    "TunnelTransfer",
    "Unsubscribe",
    "encode",
]

MAGIC_CLIENT: Final = "iris-client-magic"
MAGIC_RELAY: Final = "iris-relay-magic"
VERSION: Final = "v1.0-draft2"
#: Longest varint accepted (64-bit values).
_MAX_VARINT_BYTES: Final = 10
#: Default limit of one binary field (a 16 MiB tunnel message arrives chunked).
DEFAULT_MAX_BINARY: Final = 16 * 1024 * 1024 + 1024

Direction = Literal["client", "node"]


class RelayProtocolError(ProtocolError):
    """A relay client (or node) sent a malformed packet: its connection is closed."""


class _IncompleteError(Exception):
    """More bytes are needed to finish the packet."""


class Packet:
    """Base of every relay packet; subclasses set ``opcode`` and ``direction``."""

    opcode: ClassVar[int]
    sender: ClassVar[Direction]
    __slots__ = ()


def _packet(opcode: int, sender: Direction) -> Callable[[type[Packet]], type[Packet]]:
    def register(cls: type[Packet]) -> type[Packet]:
        cls.opcode, cls.sender = opcode, sender
        _REGISTRY[sender][opcode] = cls
        return cls

    return register


_REGISTRY: dict[Direction, dict[int, type[Packet]]] = {"client": {}, "node": {}}


# ---------------------------------------------------------------- client -> node


@_packet(0x00, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class ClientInit(Packet):
    """The client's handshake: magic, version, and the cluster it serves ("": none)."""

    magic: str
    version: str
    cluster: str


@_packet(0x02, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class ClientClose(Packet):
    """The client asks for a graceful close."""


@_packet(0x03, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class Broadcast(Packet):
    """Send ``message`` to every member of ``cluster``."""

    cluster: str
    message: bytes


@_packet(0x04, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class Request(Packet):
    """Ask one member of ``cluster``; the reply comes as a ReplyDelivery with ``id``."""

    id: int
    cluster: str
    request: bytes
    timeout_ms: int


@_packet(0x05, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class Reply(Packet):
    """A service answers the request ``id``: ``reply`` on success, else ``fault``."""

    id: int
    success: bool
    reply: bytes = b""
    fault: str = ""


@_packet(0x06, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class Subscribe(Packet):
    """Receive the events of ``topic`` on this connection."""

    topic: str


@_packet(0x07, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribe(Packet):
    """Stop receiving the events of ``topic``."""

    topic: str


@_packet(0x09, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelInit(Packet):
    """Open a tunnel to one member of ``cluster``, named ``tunnel_id`` by the client."""

    tunnel_id: int
    cluster: str
    timeout_ms: int


@_packet(0x0A, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelConfirm(Packet):
    """A service takes the inbound tunnel ``build_id`` and names it ``tunnel_id``."""

    build_id: int
    tunnel_id: int


@_packet(0x0D, "client")
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelClose(Packet):
    """The client closes its end of tunnel ``tunnel_id``."""

    tunnel_id: int


# ---------------------------------------------------------------- node -> client


@_packet(0x00, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class NodeInit(Packet):
    """The node accepts the handshake."""

    magic: str
    version: str


@_packet(0x01, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class Deny(Packet):
    """The node refuses the handshake (then closes)."""

    magic: str
    reason: str


@_packet(0x02, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class NodeClose(Packet):
    """The connection ends: ``reason`` is "" for a confirmed graceful close."""

    reason: str


@_packet(0x03, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class BroadcastDelivery(Packet):
    """A broadcast to the cluster this connection serves."""

    message: bytes


@_packet(0x04, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class RequestDelivery(Packet):
    """A request for the service: answer with Reply(``id``) within ``timeout_ms``."""

    id: int
    request: bytes
    timeout_ms: int


@_packet(0x05, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class ReplyDelivery(Packet):
    """The outcome of the client's request ``id``."""

    id: int
    timed_out: bool
    success: bool = False
    reply: bytes = b""
    fault: str = ""


@_packet(0x09, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelBuild(Packet):
    """An inbound tunnel for the service: confirm ``build_id`` with a tunnel id."""

    build_id: int
    chunk_limit: int


@_packet(0x0A, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelConfirmed(Packet):
    """The outcome of the client's TunnelInit ``tunnel_id``."""

    tunnel_id: int
    timed_out: bool
    chunk_limit: int = 0


@_packet(0x0D, "node")
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelClosed(Packet):
    """The far end closed tunnel ``tunnel_id``: ``reason`` "" if gracefully."""

    tunnel_id: int
    reason: str


# ------------------------------------------------------------- both directions


@dataclasses.dataclass(frozen=True, slots=True)
class Publish(Packet):
    """An event on ``topic`` (client: publish it; node: it arrived)."""

    topic: str
    event: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class TunnelAllow(Packet):
    """The sender of this packet can take ``allowance`` more bytes on the tunnel."""

    tunnel_id: int
    allowance: int


@dataclasses.dataclass(frozen=True, slots=True)
class TunnelTransfer(Packet):
    """A chunk of a tunnel message: ``size`` is the whole message's size on its
    first chunk and 0 on continuations."""

    tunnel_id: int
    size: int
    chunk: bytes


for _shared, _opcode in ((Publish, 0x08), (TunnelAllow, 0x0B), (TunnelTransfer, 0x0C)):
    _shared.opcode = _opcode
    _REGISTRY["client"][_opcode] = _REGISTRY["node"][_opcode] = _shared


# ----------------------------------------------------------------- encoding


def _varint(out: bytearray, value: int) -> None:
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


_ONE_BYTE: Final = tuple(bytes((value,)) for value in range(0x80))


def _uvarint(value: int) -> bytes:
    """The varint of ``value`` (one byte below 128, the common case)."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    _varint(out, value)
    return bytes(out)


def _encode_request_delivery(packet: RequestDelivery) -> bytes:
    data = packet.request
    return b"".join(
        (b"\x04", _uvarint(packet.id), _uvarint(len(data)), data, _uvarint(packet.timeout_ms))
    )


def _encode_request(packet: Request) -> bytes:
    cluster, data = packet.cluster.encode("utf-8"), packet.request
    return b"".join(
        (
            b"\x04",
            _uvarint(packet.id),
            _uvarint(len(cluster)),
            cluster,
            _uvarint(len(data)),
            data,
            _uvarint(packet.timeout_ms),
        )
    )


def _encode_reply(packet: Reply) -> bytes:
    if packet.success:
        data = packet.reply
        return b"".join((b"\x05", _uvarint(packet.id), b"\x01", _uvarint(len(data)), data))
    fault = packet.fault.encode("utf-8")
    return b"".join((b"\x05", _uvarint(packet.id), b"\x00", _uvarint(len(fault)), fault))


def _encode_reply_delivery(packet: ReplyDelivery) -> bytes:
    if packet.timed_out:
        return b"".join((b"\x05", _uvarint(packet.id), b"\x01"))
    if packet.success:
        data = packet.reply
        return b"".join((b"\x05", _uvarint(packet.id), b"\x00\x01", _uvarint(len(data)), data))
    fault = packet.fault.encode("utf-8")
    return b"".join((b"\x05", _uvarint(packet.id), b"\x00\x00", _uvarint(len(fault)), fault))


#: The packets of every request and reply, encoded without the generic path.
_ENCODERS: Final[dict[type[Packet], Callable[[Any], bytes]]] = {
    Request: _encode_request,
    Reply: _encode_reply,
    RequestDelivery: _encode_request_delivery,
    ReplyDelivery: _encode_reply_delivery,
}


def _binary(out: bytearray, value: bytes) -> None:
    _varint(out, len(value))
    out += value


def _string(out: bytearray, value: str) -> None:
    _binary(out, value.encode("utf-8"))


def encode(packet: Packet) -> bytes:
    """The wire bytes of ``packet``."""
    fast = _ENCODERS.get(type(packet))
    if fast is not None:
        return fast(packet)
    out = bytearray((packet.opcode,))
    if isinstance(packet, TunnelConfirmed):
        _varint(out, packet.tunnel_id)
        out.append(packet.timed_out)
        if not packet.timed_out:
            _varint(out, packet.chunk_limit)
        return bytes(out)
    for name, kind in _spec(type(packet)):
        value = getattr(packet, name)
        if kind == "bool":
            out.append(value)
        elif kind == "int":
            _varint(out, value)
        elif kind == "bytes":
            _binary(out, value)
        else:
            _string(out, value)
    return bytes(out)


_SPECS: dict[type[Packet], tuple[tuple[str, str], ...]] = {}


def _spec(cls: type[Packet]) -> tuple[tuple[str, str], ...]:
    """The (name, type) of each field of ``cls``, in wire order."""
    spec = _SPECS.get(cls)
    if spec is None:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        spec = _SPECS[cls] = tuple((f.name, str(f.type)) for f in fields)
    return spec


# ----------------------------------------------------------------- decoding


class _Cursor:
    __slots__ = ("data", "max_binary", "position")

    def __init__(self, data: bytearray, max_binary: int) -> None:
        self.data = data
        self.position = 0
        self.max_binary = max_binary

    def byte(self) -> int:
        if self.position >= len(self.data):
            raise _IncompleteError
        value = self.data[self.position]
        self.position += 1
        return value

    def varint(self) -> int:
        data, position = self.data, self.position
        if position < len(data) and data[position] < 0x80:  # one byte: the common case
            self.position = position + 1
            return data[position]
        value = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            octet = self.byte()
            value |= (octet & 0x7F) << shift
            if not octet & 0x80:
                if value >= 1 << 64:
                    raise RelayProtocolError("varint beyond 64 bits")
                return value
            shift += 7
        raise RelayProtocolError(f"varint longer than {_MAX_VARINT_BYTES} octets")

    def boolean(self) -> bool:
        value = self.byte()
        if value > 1:
            raise RelayProtocolError(f"bool must be 0 or 1, not {value}")
        return value == 1

    def binary(self) -> bytes:
        size = self.varint()
        if size > self.max_binary:
            raise RelayProtocolError(f"binary of {size} bytes exceeds {self.max_binary}")
        end = self.position + size
        if end > len(self.data):
            raise _IncompleteError
        value = bytes(self.data[self.position : end])
        self.position = end
        return value

    def string(self) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RelayProtocolError("string is not UTF-8") from exc


def _fields(cursor: _Cursor, cls: type[Packet]) -> Packet:
    if cls is Reply:
        request_id, success = cursor.varint(), cursor.boolean()
        if success:
            return Reply(request_id, True, reply=cursor.binary())
        return Reply(request_id, False, fault=cursor.string())
    if cls is ReplyDelivery:
        request_id, timed_out = cursor.varint(), cursor.boolean()
        if timed_out:
            return ReplyDelivery(request_id, True)
        if cursor.boolean():
            return ReplyDelivery(request_id, False, True, reply=cursor.binary())
        return ReplyDelivery(request_id, False, False, fault=cursor.string())
    if cls is TunnelConfirmed:
        tunnel_id, timed_out = cursor.varint(), cursor.boolean()
        return TunnelConfirmed(tunnel_id, timed_out, 0 if timed_out else cursor.varint())
    readers = _READERS.get(cls)
    if readers is None:
        kinds = {"bool": _Cursor.boolean, "int": _Cursor.varint, "bytes": _Cursor.binary}
        readers = _READERS[cls] = tuple(kinds.get(kind, _Cursor.string) for _, kind in _spec(cls))
    return cls(*[read(cursor) for read in readers])


#: Per packet class, the cursor's reader of each field, in wire order.
_READERS: dict[type[Packet], tuple[Callable[[_Cursor], object], ...]] = {}


class PacketReader:
    """Cuts a byte stream from one side into packets (sans-IO).

    Args:
        sender: whose packets these are: "client" (the node reads them) or
            "node" (a client reads them).
        max_binary: the longest binary or string field accepted.
    """

    def __init__(self, sender: Direction, *, max_binary: int = DEFAULT_MAX_BINARY) -> None:
        self._packets = _REGISTRY[sender]
        self._buffer = bytearray()
        self._max_binary = max_binary

    def feed(self, data: bytes) -> list[Packet]:
        """Add received bytes; return the packets now complete, in order.

        Raises:
            RelayProtocolError: the stream is malformed (unknown opcode, bad
                bool, overlong varint, oversize length, bad UTF-8).
        """
        buffer = self._buffer
        buffer += data
        packets: list[Packet] = []
        cursor = _Cursor(buffer, self._max_binary)
        start = 0
        try:
            while start < len(buffer):
                opcode = cursor.byte()
                cls = self._packets.get(opcode)
                if cls is None:
                    raise RelayProtocolError(f"unknown opcode {opcode:#04x}")
                packets.append(_fields(cursor, cls))
                start = cursor.position
        except _IncompleteError:
            pass
        del buffer[:start]  # once: not per packet, which would be quadratic
        return packets

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete packet held."""
        return len(self._buffer)

"""CBOR frames: one typed, immutable class per frame kind, and a strict codec.

On the wire a frame is one CBOR array ``[version, kind, field...]`` encoded
canonically: shortest heads, definite lengths, and only the CBOR a schema
allows (unsigned integers, byte and text strings, booleans, null, arrays; no
tags, maps, floats or negative integers). Decoding checks the byte size against
the configured limit before parsing, then the array head, the version, the
kind, the exact field count, and parses every field strictly for its type,
range and size (nesting is bounded by the schema, and no length is trusted
before it is checked against its bound and the bytes present); trailing bytes
are refused. So each frame has exactly one encoding, and any failure raises
:class:`~iris_trio.errors.ProtocolError` and nothing else.

Encoders and decoders are compiled per kind from the schema (see
``_codegen``); a strict cbor2-based reference decoder in the tests checks them.

Layers above define their own frame kinds with :func:`frame_kind`; kind numbers
are allocated in ranges: 0-15 link, 16-63 overlay, 64-127 patterns, 128-191 relay
bridging. A kind can be registered once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeVar

from ..errors import ProtocolError
from ._codegen import Encoder, compile_decoder, compile_encoder
from .fields import Blob, Field, Text, UInt, read_head

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "WIRE_VERSION",
    "Frame",
    "FrameCodec",
    "Hello",
    "Keepalive",
    "Payload",
    "frame_kind",
    "registered_kinds",
]

#: Version number carried in every frame.
WIRE_VERSION: Final = 1
#: Default frame limit: an 8 MiB message plus room for its headers.
DEFAULT_MAX_FRAME_SIZE: Final = 8 * 1024 * 1024 + 64 * 1024

F = TypeVar("F", bound="Frame")


class Frame:
    """Base class of every frame kind. Subclasses are frozen, slotted dataclasses."""

    __slots__ = ()
    KIND: ClassVar[int]
    SCHEMA: ClassVar[tuple[Field, ...]]


_REGISTRY: dict[int, type[Frame]] = {}
#: Compiled per kind (see ``_codegen``): frame -> encoded parts, and list -> frame.
_ENCODERS: dict[type[Frame], Encoder] = {}
_DECODERS: dict[int, tuple[int, Callable[[Any, int], Frame]]] = {}


def frame_kind(kind: int, *schema: Field) -> Callable[[type[F]], type[F]]:
    """Register a frame class under ``kind`` with one validator per dataclass field.

    The validators are listed in the order of the dataclass fields.
    """

    def register(cls: type[F]) -> type[F]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if kind in _REGISTRY:
            raise ValueError(f"frame kind {kind} already registered by {_REGISTRY[kind].__name__}")
        names = tuple(f.name for f in dataclasses.fields(cls))
        if len(names) != len(schema):
            raise TypeError(f"{cls.__name__}: {len(names)} fields but {len(schema)} validators")
        cls.KIND = kind
        cls.SCHEMA = schema
        _ENCODERS[cls] = compile_encoder(cls, WIRE_VERSION, kind, names, schema)
        _DECODERS[kind] = (len(schema) + 2, compile_decoder(cls, schema))
        _REGISTRY[kind] = cls
        return cls

    return register


def registered_kinds() -> dict[int, type[Frame]]:
    """A copy of the kind -> class registry (for tests and diagnostics)."""
    return dict(_REGISTRY)


class FrameCodec:
    """Encodes and strictly decodes frames under a size limit.

    Args:
        max_frame_size: largest encoded frame accepted or produced, in bytes.
    """

    __slots__ = ("max_frame_size",)

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 64:
            raise ValueError("max_frame_size must be at least 64 bytes")
        self.max_frame_size = max_frame_size

    def encode(self, frame: Frame) -> bytes:
        """Encode ``frame``.

        Raises:
            ValueError: a field value does not satisfy the frame's schema.
            MessageTooLargeError: the encoded frame exceeds ``max_frame_size``.
        """
        try:
            return _ENCODERS[type(frame)](frame, self.max_frame_size, False)
        except ProtocolError as exc:
            raise ValueError(f"{type(frame).__name__}: {exc}") from None

    def encode_framed(self, frame: Frame) -> bytes:
        """Encode ``frame`` behind its 4-byte length prefix, in one allocation.

        Raises like :meth:`encode`.
        """
        try:
            return _ENCODERS[type(frame)](frame, self.max_frame_size, True)
        except ProtocolError as exc:
            raise ValueError(f"{type(frame).__name__}: {exc}") from None

    @staticmethod
    def kind_of(data: bytes | bytearray | memoryview) -> int | None:
        """The kind of the frame in ``data`` from its header alone (None: not a
        frame's header); :meth:`decode` still checks the whole frame."""
        try:
            if data[0] >> 5 != 4 or data[1] != WIRE_VERSION:
                return None
            kind: int = read_head(data, 2, 0)[0]
        except (IndexError, ProtocolError):
            return None
        return kind

    def decode(self, data: bytes | bytearray | memoryview) -> Frame:
        """Decode one frame from exactly ``data``.

        Raises:
            ProtocolError: for anything but one canonical frame of a known kind.
        """
        size = len(data)
        if size > self.max_frame_size:
            raise ProtocolError(f"frame of {size} bytes exceeds {self.max_frame_size}")
        try:
            initial = data[0]
            if initial >> 5 != 4 or initial & 31 >= 24:
                raise ProtocolError("a frame is an array [version, kind, fields...]")
            if data[1] != WIRE_VERSION:
                raise ProtocolError(f"unsupported wire version (initial byte {data[1]:#04x})")
            kind = data[2]
            if kind < 24:  # (kinds below 256 inline; others as any head)
                position = 3
            elif kind == 24 and data[3] >= 24:
                kind, position = data[3], 4
            else:
                kind, position = read_head(data, 2, 0)
            entry = _DECODERS.get(kind)
            if entry is None:
                raise ProtocolError(f"unknown frame kind {kind}")
            count, decoder = entry
            if initial & 31 != count:
                name = _REGISTRY[kind].__name__
                raise ProtocolError(f"{name} takes {count - 2} fields, got {(initial & 31) - 2}")
            return decoder(data, position)
        except IndexError:
            raise ProtocolError("truncated frame") from None


# --- link-level frames (kinds 0-15) -------------------------------------------------------------


@frame_kind(0, Text(64), Text(256), UInt(32))
@dataclasses.dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Sent inside the handshake (messages 2 and 3) by both sides.

    Attributes:
        software: implementation name and version, for diagnostics.
        listen: the address ("host:port") the sender accepts links on, or "".
        max_frame_size: the largest frame the sender accepts.
    """

    software: str
    listen: str
    max_frame_size: int


@frame_kind(1)
@dataclasses.dataclass(frozen=True, slots=True)
class Keepalive(Frame):
    """Sent by an idle link so the peer knows it is alive."""


@frame_kind(2, UInt(32), Blob())
@dataclasses.dataclass(frozen=True, slots=True)
class Payload(Frame):
    """Opaque application bytes on a numbered channel (used by tests and benchmarks).

    Attributes:
        channel: a number the application chooses.
        data: the bytes; bounded by the frame limit only.
    """

    channel: int
    data: bytes

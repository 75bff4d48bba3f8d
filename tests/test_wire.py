"""Framing and the strict frame codec."""

from __future__ import annotations

import dataclasses
import itertools
import tracemalloc

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iris_trio.overlay.frames  # noqa: F401 - registers the overlay frame kinds too
from iris_trio.errors import MessageTooLargeError, ProtocolError
from iris_trio.wire import FrameCodec, Hello, Keepalive, LengthPrefixedReader, Payload
from iris_trio.wire.fields import Blob, Boolean, Field, Optional, Record, Sequence, Text, UInt
from iris_trio.wire.frames import WIRE_VERSION, Frame, frame_kind, registered_kinds
from iris_trio.wire.framing import frame_prefix, record_prefix

from .cbor_reference import reference_decode

CODEC = FrameCodec(max_frame_size=1 << 20)


@frame_kind(
    15,  # reserved for tests
    Optional(UInt(16)),
    Sequence(Blob(exact=4), 5),
    Boolean(),
    Text(20),
    Optional(Sequence(Text(8), 3)),
)
@dataclasses.dataclass(frozen=True, slots=True)
class Exotic(Frame):
    """Exercises every field type, including the generic (not inlined) ones."""

    maybe: int | None
    ids: tuple[bytes, ...]
    flag: bool
    name: str
    tags: tuple[str, ...] | None


# ------------------------------------------------------------------ framing


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    prefix=st.sampled_from([2, 4]),
)
def test_reader_output_does_not_depend_on_chunking(
    payloads: list[bytes], cuts: list[int], prefix: int
) -> None:
    make = record_prefix if prefix == 2 else frame_prefix
    stream = b"".join(make(len(p)) + p for p in payloads)
    reader = LengthPrefixedReader(prefix, 1 << 16)
    out: list[bytes] = []
    for chunk in _chunks(stream, cuts):
        out.extend(bytes(p) for p in reader.feed(chunk))
    assert out == payloads
    assert reader.buffered == 0


def test_reader_rejects_a_declared_length_over_the_limit_before_buffering() -> None:
    reader = LengthPrefixedReader(4, 1000)
    with pytest.raises(ProtocolError):
        list(reader.feed(frame_prefix(1001)))


def test_record_prefix_refuses_oversize_records() -> None:
    assert record_prefix(65535) == b"\xff\xff"
    with pytest.raises(MessageTooLargeError):
        record_prefix(65536)


# ----------------------------------------------------------- strategies


def values_for(field: Field) -> st.SearchStrategy[object]:
    if isinstance(field, UInt):
        return st.integers(min_value=0, max_value=field.bound - 1)
    if isinstance(field, Boolean):
        return st.booleans()
    if isinstance(field, Blob):
        if field.exact is not None:
            return st.binary(min_size=field.exact, max_size=field.exact)
        return st.binary(max_size=min(field.max_size or 2000, 2000))
    if isinstance(field, Text):
        return st.text(max_size=field.max_size // 4)  # at most 4 UTF-8 bytes a character
    if isinstance(field, Optional):
        return st.none() | values_for(field.inner)
    if isinstance(field, Sequence):
        return st.lists(values_for(field.item), max_size=min(field.max_items, 8)).map(tuple)
    if isinstance(field, Record):
        return st.tuples(*[values_for(inner) for inner in field.fields])
    raise AssertionError(f"no strategy for {field!r}")


def frames() -> st.SearchStrategy[Frame]:
    def of_kind(cls: type[Frame]) -> st.SearchStrategy[Frame]:
        return st.tuples(*[values_for(f) for f in cls.SCHEMA]).map(lambda v: cls(*v))

    return st.one_of(*[of_kind(cls) for _, cls in sorted(registered_kinds().items())])


@given(frames())
def test_every_frame_kind_round_trips(frame: Frame) -> None:
    encoded = CODEC.encode(frame)
    assert CODEC.decode(encoded) == frame


@given(frames())
def test_encoders_write_exactly_what_cbor2_writes(frame: Frame) -> None:
    values = [getattr(frame, name) for name in frame.__dataclass_fields__]  # type: ignore[attr-defined]
    assert CODEC.encode(frame) == cbor2.dumps([WIRE_VERSION, frame.KIND, *values])


def _agree_with_reference(data: bytes) -> None:
    try:
        expected: Frame | None = reference_decode(data)
    except ProtocolError:
        expected = None
    try:
        frame: Frame | None = CODEC.decode(data)
    except ProtocolError:
        frame = None
    assert frame == expected
    if frame is not None:
        assert CODEC.encode(frame) == data  # only the canonical encoding is accepted


@settings(max_examples=3000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_like_the_reference_decoder(data: bytes) -> None:
    _agree_with_reference(data)


@settings(max_examples=1000)
@given(frames(), st.data())
def test_edited_frames_decode_like_the_reference_decoder(frame: Frame, data: st.DataObject) -> None:
    encoded = bytearray(CODEC.encode(frame))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        action = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        position = data.draw(st.integers(min_value=0, max_value=max(0, len(encoded) - 1)))
        byte = data.draw(st.integers(min_value=0, max_value=255))
        if action == "set" and encoded:
            encoded[position] = byte
        elif action == "insert":
            encoded.insert(position, byte)
        elif action == "delete" and encoded:
            del encoded[position]
        else:
            del encoded[position:]
    _agree_with_reference(bytes(encoded))


# ------------------------------------------------------- specific refusals

GOOD = [WIRE_VERSION, Payload.KIND, 7, b"data"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (cbor2.dumps([2, Payload.KIND, 7, b"data"]), "version"),
        (cbor2.dumps([WIRE_VERSION, 999, 7, b"data"]), "unknown"),
        (cbor2.dumps([WIRE_VERSION, True, 7, b"data"]), "unknown"),
        (cbor2.dumps([WIRE_VERSION, Payload.KIND, 7]), "fields"),
        (cbor2.dumps([*GOOD, b"extra"]), "fields"),
        (cbor2.dumps([WIRE_VERSION, Payload.KIND, "7", b"data"]), "uint"),
        (cbor2.dumps([WIRE_VERSION, Payload.KIND, True, b"data"]), "uint"),
        (cbor2.dumps([WIRE_VERSION, Payload.KIND, -1, b"data"]), "uint"),
        (cbor2.dumps([WIRE_VERSION, Payload.KIND, 2**32, b"data"]), "uint"),
        (cbor2.dumps([WIRE_VERSION, Payload.KIND, 7, "data"]), "bytes"),
        (cbor2.dumps([WIRE_VERSION, Payload.KIND, 7.0, b"data"]), "uint"),
        (cbor2.dumps({"version": 1}), "array"),
        (cbor2.dumps(GOOD) + b"\x00", "trailing"),
        # 7 encoded with a one-byte argument instead of inline: not canonical
        (bytes([0x84, 0x01, 0x02, 0x18, 0x07, 0x44]) + b"data", "canonical"),
        # indefinite-length array
        (bytes([0x9F, 0x01, 0x02, 0x07, 0x44]) + b"data" + bytes([0xFF]), "CBOR"),
        # a tag (epoch datetime) on a field
        (bytes([0x84, 0x01, 0x02, 0xC1, 0x07, 0x44]) + b"data", "tag"),
        # a bignum tag
        (bytes([0x84, 0x01, 0x02, 0xC2, 0x41, 0x07, 0x44]) + b"data", "tag"),
        # deep nesting
        (bytes([0x81]) * 100 + bytes([0x00]), "CBOR"),
        (b"", "CBOR"),
        (b"\xff", "CBOR"),
    ],
)
def test_malformed_frames_are_rejected_with_protocol_error(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError):
        CODEC.decode(raw)


def test_hello_fields_are_bounded() -> None:
    raw = cbor2.dumps([WIRE_VERSION, Hello.KIND, "x" * 65, "", 10])
    with pytest.raises(ProtocolError):
        CODEC.decode(raw)


def test_frames_over_the_limit_are_refused_both_ways() -> None:
    codec = FrameCodec(max_frame_size=1024)
    with pytest.raises(MessageTooLargeError):
        codec.encode(Payload(1, bytes(1024)))
    with pytest.raises(ProtocolError):
        codec.decode(CODEC.encode(Payload(1, bytes(1024))))


def test_invalid_field_values_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="Payload"):
        CODEC.encode(Payload(-1, b""))
    with pytest.raises(ValueError, match="Hello"):
        CODEC.encode(Hello("x" * 100, "", 1))


def test_huge_declared_lengths_do_not_allocate() -> None:
    # An array of 2**32 items and a byte string of 2**32 bytes, declared in 10 bytes.
    hostile = [
        bytes([0x84, 0x01, 0x02, 0x07, 0x5B]) + (2**32).to_bytes(8, "big"),
        bytes([0x9B]) + (2**40).to_bytes(8, "big"),
        bytes([0x84, 0x01, 0x02, 0x07, 0x5A, 0xFF, 0xFF, 0xFF, 0xFF]) + bytes(100),
    ]
    tracemalloc.start()
    try:
        for raw in hostile:
            with pytest.raises(ProtocolError):
                CODEC.decode(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_keepalive_is_tiny() -> None:
    assert len(CODEC.encode(Keepalive())) == 3


def test_kind_of_reads_the_kind_from_the_header_alone() -> None:
    codec = FrameCodec()
    for frame in (Keepalive(), Payload(7, b"x" * 300)):
        encoded = codec.encode(frame)
        assert codec.kind_of(encoded) == type(frame).KIND
        assert codec.kind_of(encoded[:3]) == type(frame).KIND  # the header is enough
    assert codec.kind_of(b"") is None
    assert codec.kind_of(b"\x01\x02\x03") is None  # not an array
    assert codec.kind_of(cbor2.dumps([99, 1])) is None  # another wire version

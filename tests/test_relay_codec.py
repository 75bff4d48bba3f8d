"""The relay protocol codec: byte-exact packets, strict parsing, incremental feeding."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_trio.relay import codec
from iris_trio.relay.codec import (
    ClientInit,
    Packet,
    PacketReader,
    RelayProtocolError,
    Reply,
    ReplyDelivery,
    TunnelConfirmed,
    TunnelTransfer,
    encode,
)

VARINT = st.integers(min_value=0, max_value=2**64 - 1)
SMALL = st.integers(min_value=0, max_value=2**32)


def packets_of(sender: str) -> st.SearchStrategy[Packet]:
    """Any packet one side may send, fields drawn by their types."""
    options: list[st.SearchStrategy[Packet]] = []
    registry = codec._REGISTRY[sender]  # type: ignore[index]
    for cls in set(registry.values()):
        if cls is Reply:
            options.append(
                st.builds(Reply, VARINT, st.just(True), reply=st.binary(max_size=64))
                | st.builds(Reply, VARINT, st.just(False), fault=st.text(max_size=32))
            )
        elif cls is ReplyDelivery:
            options.append(
                st.builds(ReplyDelivery, VARINT, st.just(True))
                | st.builds(ReplyDelivery, VARINT, st.just(False), st.just(True), reply=st.binary())
                | st.builds(ReplyDelivery, VARINT, st.just(False), st.just(False), fault=st.text())
            )
        elif cls is TunnelConfirmed:
            options.append(
                st.builds(TunnelConfirmed, VARINT, st.just(True))
                | st.builds(TunnelConfirmed, VARINT, st.just(False), VARINT)
            )
        else:
            fields = {
                f.name: {"int": VARINT, "bool": st.booleans(), "bytes": st.binary(max_size=64)}.get(
                    str(f.type), st.text(max_size=32)
                )
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            }
            options.append(st.builds(cls, **fields))
    return st.one_of(options)


@pytest.mark.parametrize("sender", ["client", "node"])
@given(data=st.data())
def test_every_packet_round_trips_fed_whole_or_byte_by_byte(
    sender: str, data: st.DataObject
) -> None:
    packets = data.draw(st.lists(packets_of(sender), min_size=1, max_size=5))
    wire = b"".join(encode(p) for p in packets)
    assert PacketReader(sender).feed(wire) == packets  # type: ignore[arg-type]
    reader = PacketReader(sender)  # type: ignore[arg-type]
    got: list[Packet] = []
    for index in range(len(wire)):
        got += reader.feed(wire[index : index + 1])
    assert got == packets and reader.buffered == 0


def test_known_bytes() -> None:
    init = encode(ClientInit(codec.MAGIC_CLIENT, codec.VERSION, "echo"))
    assert init == b"\x00\x11iris-client-magic\x0bv1.0-draft2\x04echo"
    assert encode(TunnelTransfer(300, 0, b"ab")) == b"\x0c\xac\x02\x00\x02ab"
    assert encode(Reply(1, False, fault="no")) == b"\x05\x01\x00\x02no"
    assert encode(ReplyDelivery(7, True)) == b"\x05\x07\x01"


@pytest.mark.parametrize(
    ("sender", "wire", "complaint"),
    [
        ("client", b"\x0e", "unknown opcode"),
        ("client", b"\x01\x00", "unknown opcode"),  # DENY comes only from the node
        ("node", b"\x06\x00", "unknown opcode"),  # SUBSCRIBE comes only from the client
        ("client", b"\x05\x01\x02", "bool"),
        ("node", b"\x0a\x01\x07", "bool"),
        ("client", b"\x0d" + b"\xff" * 10 + b"\x01", "varint longer"),
        ("client", b"\x0d" + b"\xff" * 9 + b"\x02", "beyond 64 bits"),
        ("client", b"\x06\xff\xff\xff\xff\x0f", "exceeds"),  # a 4 GiB topic
        ("client", b"\x06\x02\xc3\x28", "UTF-8"),
    ],
)
def test_malformed_input_is_a_protocol_error(sender: str, wire: bytes, complaint: str) -> None:
    with pytest.raises(RelayProtocolError, match=complaint):
        PacketReader(sender).feed(wire)  # type: ignore[arg-type]


def test_an_incomplete_packet_waits_and_an_oversize_one_is_refused_before_buffering() -> None:
    reader = PacketReader("client", max_binary=1000)
    assert reader.feed(b"\x0d\x80") == []  # a varint cut short: more is coming
    assert reader.buffered == 2
    with pytest.raises(RelayProtocolError):
        PacketReader("client", max_binary=1000).feed(b"\x03\x01x\xe9\x07")  # 1001 bytes declared

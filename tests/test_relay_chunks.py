"""Tunnel chunking over the relay, sans-IO: split, reassemble, allowance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_trio.relay.chunks import ChunkAssembler, split
from iris_trio.relay.codec import RelayProtocolError


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_split_then_assemble_gives_the_message_back(message: bytes, limit: int) -> None:
    chunks = list(split(message, limit))
    assert chunks[0][0] == len(message)
    assert all(size == 0 for size, _ in chunks[1:])
    assert all(len(piece) <= limit for _, piece in chunks)
    assembler = ChunkAssembler(10_000, max_message=10_000)
    results = [assembler.chunk(size, piece) for size, piece in chunks]
    assert [r[0] for r in results[:-1]] == [None] * (len(chunks) - 1)
    assert results[-1] == (message, 0)
    assert assembler.allowance == 10_000 - len(message)


def test_an_empty_message_is_one_empty_chunk() -> None:
    assert list(split(b"")) == [(0, b"")]
    assert ChunkAssembler(1, max_message=10).chunk(0, b"") == (b"", 0)


def test_a_new_first_chunk_discards_the_incomplete_message() -> None:
    assembler = ChunkAssembler(1000, max_message=1000)
    assert assembler.chunk(500, b"x" * 300) == (None, 0)
    assert assembler.partial == 300
    assert assembler.chunk(2, b"ok") == (b"ok", 300)
    assert assembler.partial == 0


def test_a_started_message_continues_past_the_allowance() -> None:
    assembler = ChunkAssembler(100, max_message=1000)
    assert assembler.chunk(300, b"a" * 100) == (None, 0)
    assert assembler.chunk(0, b"a" * 200) == (b"a" * 300, 0)
    assert assembler.allowance == -200
    with pytest.raises(RelayProtocolError, match="without allowance"):
        assembler.chunk(1, b"b")
    assembler.grant(201)
    assert assembler.chunk(1, b"b") == (b"b", 0)


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        ([(0, b"stray")], "continuation chunk without a message"),
        ([(3, b"abcd")], "overruns"),
        ([(2, b"a"), (0, b"bc")], "overruns"),
        ([(2000, b"a")], "exceeds"),
    ],
)
def test_malformed_chunk_sequences_are_protocol_errors(
    chunks: list[tuple[int, bytes]], error: str
) -> None:
    assembler = ChunkAssembler(10_000, max_message=1000)
    with pytest.raises(RelayProtocolError, match=error):
        for size, piece in chunks:
            assembler.chunk(size, piece)

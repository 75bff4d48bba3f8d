"""Tunnel messages over the relay, sans-IO: splitting into chunks, putting chunks
back together, and the byte allowance that paces them.

Both ends of a relay connection use these: a message larger than the chunk limit
travels as a first chunk carrying the whole message's size and continuation
chunks carrying 0. A sender starts a message only while it has allowance and,
once started, sends it whole (so a half-sent message never blocks the stream);
each chunk consumes allowance equal to its length. A receiver discards an
incomplete message when a new first chunk arrives, and gives its bytes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from .codec import RelayProtocolError

__all__ = ["CHUNK_LIMIT", "ChunkAssembler", "split"]

#: The chunk size the original node uses, and ours.
CHUNK_LIMIT: Final = 64 * 1024


def split(message: bytes, limit: int = CHUNK_LIMIT) -> Iterator[tuple[int, bytes]]:
    """The (size_or_cont, chunk) pairs that carry ``message``: the first names its
    size, the rest 0. An empty message is one empty first chunk."""
    if limit < 1:
        raise ValueError("the chunk limit must be at least 1")
    view = memoryview(message)
    yield len(message), bytes(view[:limit])
    for start in range(limit, len(message), limit):
        yield 0, bytes(view[start : start + limit])


class ChunkAssembler:
    """The receiving side of one tunnel direction.

    ``granted`` is the allowance the sender was given; :meth:`chunk` consumes it
    and :meth:`grant` records what was given back (for a message taken by the
    application, or bytes discarded).

    Args:
        granted: bytes the sender may send before it hears of more.
        max_message: the largest message accepted.
    """

    def __init__(self, granted: int, *, max_message: int) -> None:
        self.allowance = granted
        self._max_message = max_message
        self._parts: list[bytes] = []
        self._active = False  # a message is incomplete
        self._size = 0
        self._got = 0

    @property
    def partial(self) -> int:
        """Bytes of the incomplete message held."""
        return self._got

    def grant(self, size: int) -> None:
        """The sender was given ``size`` more bytes of allowance."""
        self.allowance += size

    def chunk(self, size: int, data: bytes) -> tuple[bytes | None, int]:
        """Take one chunk; return (the message it completes or None, bytes of an
        incomplete message it discarded, which the caller gives back as it sees fit).

        Raises:
            RelayProtocolError: a message started without allowance, is larger
                than allowed, or a chunk overruns its message.
        """
        discarded = 0
        if size > 0:  # a first chunk
            if self._active:
                discarded = self._got
                self._parts, self._got = [], 0
            if self.allowance <= 0:
                raise RelayProtocolError("a tunnel message started without allowance")
            if size > self._max_message:
                raise RelayProtocolError(
                    f"tunnel message of {size} bytes exceeds {self._max_message}"
                )
            self._size, self._active = size, True
        elif not self._active:
            if data:
                raise RelayProtocolError("a continuation chunk without a message")
            if self.allowance <= 0:
                raise RelayProtocolError("a tunnel message started without allowance")
            return b"", discarded  # the empty message
        if self._got + len(data) > self._size:
            raise RelayProtocolError("a tunnel chunk overruns its message")
        self.allowance -= len(data)
        self._parts.append(data)
        self._got += len(data)
        if self._got < self._size:
            return None, discarded
        message = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._got, self._active = [], 0, False
        return message, discarded

"""Sans-IO length-prefix framing.

Two framings use this module: Noise messages and encrypted records travel with
a 2-byte big-endian length (at most 65535 bytes each, as the Noise spec
requires), and the frames inside the decrypted byte stream travel with a
4-byte big-endian length bounded by the configured frame limit.

The reader is fed arbitrary chunks and yields every complete payload; it
rejects a declared length above its limit *before* buffering the payload, so
a peer can never make it hold more than ``max_size`` plus one chunk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import MessageTooLargeError, ProtocolError

__all__ = [
    "MAX_RECORD_SIZE",
    "LengthPrefixedReader",
    "frame_prefix",
    "record_prefix",
]

#: Largest Noise message / record on the wire, in bytes (the Noise limit).
MAX_RECORD_SIZE = 65535

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def record_prefix(size: int) -> bytes:
    """Return the 2-byte length prefix of a record of ``size`` bytes.

    Raises:
        MessageTooLargeError: if ``size`` exceeds :data:`MAX_RECORD_SIZE`.
    """
    if size > MAX_RECORD_SIZE:
        raise MessageTooLargeError(f"record of {size} bytes exceeds {MAX_RECORD_SIZE}")
    return _U16.pack(size)


def frame_prefix(size: int) -> bytes:
    """Return the 4-byte length prefix of a frame of ``size`` bytes."""
    return _U32.pack(size)


class LengthPrefixedReader:
    """Reassembles length-prefixed payloads from a byte stream, whatever the chunking.

    Args:
        prefix_size: 2 (records) or 4 (frames).
        max_size: largest acceptable payload; a larger declared length raises
            :class:`ProtocolError` at once.
    """

    __slots__ = ("_buffer", "_prefix", "max_size")

    def __init__(self, prefix_size: int, max_size: int) -> None:
        if prefix_size == 2:
            self._prefix = _U16
            max_size = min(max_size, MAX_RECORD_SIZE)
        elif prefix_size == 4:
            self._prefix = _U32
        else:
            raise ValueError("prefix_size must be 2 or 4")
        #: Largest acceptable payload; may be lowered for a single message.
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete payload."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Add ``data`` and yield every payload it completes, in order.

        Payloads before a bad length prefix are yielded first; then
        :class:`ProtocolError` is raised (a declared length above ``max_size``),
        after which the reader must not be used.
        """
        buffer = self._buffer
        buffer += data
        prefix = self._prefix
        header = prefix.size
        limit = self.max_size
        position = 0
        try:
            while len(buffer) - position >= header:
                (size,) = prefix.unpack_from(buffer, position)
                if size > limit:
                    raise ProtocolError(
                        f"declared length {size} exceeds the limit of {limit} bytes"
                    )
                start = position + header
                if len(buffer) - start < size:
                    break
                position = start + size
                yield bytes(buffer[start:position])
        finally:
            if position:
                del buffer[:position]

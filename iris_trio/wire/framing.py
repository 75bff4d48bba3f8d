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

    Payloads are yielded as zero-copy :class:`memoryview` slices of the data fed
    in (or of a join of a few chunks when a payload spans them); they stay valid
    as long as the caller holds them. The reader takes ownership of what it is
    fed: a ``bytearray`` must not be modified afterwards.

    Args:
        prefix_size: 2 (records) or 4 (frames).
        max_size: largest acceptable payload; a larger declared length raises
            :class:`ProtocolError` at once.
    """

    __slots__ = ("_held", "_needed", "_pending", "_prefix", "max_size")

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
        # Unconsumed chunks, their total size, and how many bytes must be held
        # before parsing can make progress: a payload spanning many chunks is
        # joined once, not once per chunk.
        self._pending: list[bytes | bytearray] = []
        self._held = 0
        self._needed = self._prefix.size

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete payload."""
        return self._held

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Add ``data`` and yield every payload it completes, in order.

        Payloads before a bad length prefix are yielded first; then
        :class:`ProtocolError` is raised (a declared length above ``max_size``),
        after which the reader must not be used.
        """
        if type(data) is memoryview:
            data = data.tobytes()
        if self._pending:
            self._pending.append(data)
            self._held += len(data)
            if self._held < self._needed:
                return
            buffer: bytes | bytearray = b"".join(self._pending)
        else:
            buffer = data
        self._pending = []
        self._held = 0
        prefix = self._prefix
        header = prefix.size
        limit = self.max_size
        end = len(buffer)
        view = memoryview(buffer)
        position = 0
        needed = header
        try:
            while end - position >= header:
                (size,) = prefix.unpack_from(buffer, position)
                if size > limit:
                    raise ProtocolError(
                        f"declared length {size} exceeds the limit of {limit} bytes"
                    )
                start = position + header
                if end - start < size:
                    needed = header + size
                    break
                position = start + size
                yield view[start:position]
        finally:
            if position < end:
                rest = buffer[position:] if position else buffer
                self._pending = [rest]
                self._held = len(rest)
                self._needed = needed

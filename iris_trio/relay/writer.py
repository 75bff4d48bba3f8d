"""The sending half of a relay connection (either side), on anyio.

Packets are encoded as they are queued and written by one task in as few
writes as possible: whatever queued up while the previous write was in flight
goes out together. Senders wait while more than ``limit`` bytes are queued;
control packets (replies, closes, allowances) may be forced past the limit so
that a full queue never blocks the protocol itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from .codec import Packet, encode

__all__ = ["PacketWriter"]


class PacketWriter:
    """Queues packets and writes them with ``send_all`` from :meth:`run`.

    Args:
        send_all: writes bytes to the connection.
        limit: queued bytes beyond which :meth:`send` waits.
    """

    def __init__(self, send_all: Callable[[bytes], Awaitable[None]], limit: int) -> None:
        self._send_all = send_all
        self._limit = limit
        self._chunks: list[bytes] = []
        self._queued = 0
        self._has_data = anyio.Event()
        self._has_room = anyio.Event()
        self._has_room.set()
        self._flushed = anyio.Event()
        self._flushed.set()
        self._closed = False
        self.bytes_written = 0

    @property
    def queued(self) -> int:
        """Bytes waiting to be written."""
        return self._queued

    def send_nowait(self, packet: Packet) -> None:
        """Queue ``packet`` regardless of the limit (control packets)."""
        self.send_bytes_nowait(encode(packet))

    def send_bytes_nowait(self, data: bytes) -> None:
        """Queue encoded packet bytes regardless of the limit."""
        if self._closed:
            raise anyio.BrokenResourceError("the relay connection is closed")
        self._chunks.append(data)
        self._queued += len(data)
        self._has_data.set()
        if self._flushed.is_set():
            self._flushed = anyio.Event()
        if self._queued >= self._limit and self._has_room.is_set():
            self._has_room = anyio.Event()

    async def send(self, packet: Packet) -> None:
        """Queue ``packet``, first waiting while the queue is over its limit."""
        while self._queued >= self._limit and not self._closed:
            await self._has_room.wait()
        self.send_nowait(packet)
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def flush(self) -> None:
        """Wait until everything queued so far was written (or the writer stopped)."""
        await self._flushed.wait()

    def close(self) -> None:
        """Refuse further packets and wake every waiter."""
        self._closed = True
        self._has_room.set()
        self._has_data.set()
        self._flushed.set()

    async def run(self) -> None:
        """Write queued packets until :meth:`close` (then write what is left)."""
        while True:
            await self._has_data.wait()
            if not self._chunks:
                if self._closed:
                    return
                self._has_data = anyio.Event()
                continue
            data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = []
            self._queued = 0
            self._has_room.set()
            try:
                await self._send_all(data)
            except BaseException:
                self.close()
                raise
            self.bytes_written += len(data)
            if not self._chunks:
                self._flushed.set()
                if self._closed:
                    return
                self._has_data = anyio.Event()

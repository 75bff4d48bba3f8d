"""The sending half of a relay connection (either side), on anyio.

Packets are encoded as they are queued and written by one task in as few
writes as possible: whatever queued up while the previous write was in flight
goes out together. Senders wait while more than ``limit`` bytes are queued;
control packets (replies, closes, allowances) may be forced past the limit so
that a full queue never blocks the protocol itself.

Given the socket's file descriptor, a packet is written at once, without a task
switch, when nothing is queued or being written and either something was read
since the last write (an answer) or the connection was quiet for a millisecond;
packets that follow each other closely queue up and go out in batches, and a
burst of 16 queued packets is written at once too (the other side can begin on
them while this one makes the rest). (Only where a completed ``send_all`` means
the bytes reached the socket: trio.)

A packet queued with :meth:`PacketWriter.send_withdrawable_nowait` can be taken
back with :meth:`PacketWriter.withdraw` while not one byte of it was written:
the relay gives the requests it never delivered back to their requesters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Final

import anyio

from .backend import EventLike, current_backend
from .codec import Packet, encode

__all__ = ["PacketWriter"]

#: Quiet time after which a packet is written at once (seconds).
_EAGER_IDLE: Final = 1e-3
#: Packets queued in one turn that are written at once, without waiting for the
#: writer task.
_EAGER_BATCH: Final = 16


class PacketWriter:
    """Queues packets and writes them with ``send_all`` from :meth:`run`.

    Args:
        send_all: writes bytes to the connection.
        limit: queued bytes beyond which :meth:`send` waits.
        fd: the socket's descriptor, for eager writes (None: always the task).
    """

    def __init__(
        self, send_all: Callable[[bytes], Awaitable[None]], limit: int, *, fd: int | None = None
    ) -> None:
        self._send_all = send_all
        backend = current_backend()
        self._event = backend.event
        self._checkpoint_if_cancelled = backend.checkpoint_if_cancelled
        self._fd = fd
        self._sending = False
        self._read_since_write = False
        self._last_write = 0.0
        self._limit = limit
        self._chunks: list[bytes] = []
        # Parallel to _chunks: the ticket of each whole packet queued with
        # send_withdrawable_nowait, 0 for the others (and for partly written ones).
        self._tickets: list[int] = []
        self._last_ticket = 0
        self._queued = 0
        self._has_data: EventLike = self._event()
        self._has_room: EventLike = self._event()
        self._has_room.set()
        self._flushed: EventLike = self._event()
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

    def send_withdrawable_nowait(self, packet: Packet) -> int:
        """Queue ``packet`` regardless of the limit; return its ticket for
        :meth:`withdraw`, or 0 when some of it was written at once (it may
        have reached the other side: it can no longer be withdrawn)."""
        self._last_ticket += 1
        return self.send_bytes_nowait(encode(packet), self._last_ticket)

    def send_bytes_nowait(self, data: bytes, ticket: int = 0) -> int:
        """Queue encoded packet bytes regardless of the limit; return ``ticket``
        if they are all still queued, else 0 (see :meth:`withdraw`)."""
        if self._closed:
            raise anyio.BrokenResourceError("the relay connection is closed")
        if (
            self._fd is not None
            and not self._chunks
            and not self._sending
            and (self._read_since_write or time.monotonic() - self._last_write >= _EAGER_IDLE)
        ):
            size = len(data)
            data = self._write_now(data)
            if not data:
                return 0
            if len(data) < size:
                ticket = 0  # partly written: the rest must follow
        self._chunks.append(data)
        self._tickets.append(ticket)
        self._queued += len(data)
        if len(self._chunks) >= _EAGER_BATCH and self._fd is not None and not self._sending:
            # A burst: out now, so that the other side can begin on it while
            # this one makes the rest (both sides work at once).
            self._write_queued_now()
            if not self._chunks:
                return 0
            if self._tickets[-1] != ticket:
                ticket = 0
        self._has_data.set()
        if self._flushed.is_set():
            self._flushed = self._event()
        if self._queued >= self._limit and self._has_room.is_set():
            self._has_room = self._event()
        return ticket

    def withdraw(self, tickets: Collection[int]) -> set[int]:
        """Take back the packets of ``tickets`` not one byte of which was handed
        to the connection yet (queued, not being written); return their tickets.
        The others may have reached the other side."""
        wanted = set(tickets)
        wanted.discard(0)
        if not wanted or not self._chunks:
            return set()
        withdrawn: set[int] = set()
        chunks: list[bytes] = []
        kept: list[int] = []
        for data, ticket in zip(self._chunks, self._tickets, strict=True):
            if ticket in wanted:
                withdrawn.add(ticket)
                self._queued -= len(data)
            else:
                chunks.append(data)
                kept.append(ticket)
        self._chunks, self._tickets = chunks, kept
        if self._queued < self._limit:
            self._has_room.set()
        if not chunks and not self._sending:
            self._flushed.set()
        return withdrawn

    def _write_queued_now(self) -> None:
        """Write what the socket takes of the queue at once; the packets not one
        byte of which went stay queued with their tickets."""
        data = b"".join(self._chunks)
        written = len(data) - len(self._write_now(data))
        if not written:
            return
        self._queued -= written
        chunks, tickets = self._chunks, self._tickets
        done = 0
        while done < len(chunks) and written >= len(chunks[done]):
            written -= len(chunks[done])
            done += 1
        del chunks[:done], tickets[:done]
        if written:  # partly written: the rest must follow, and can no longer be withdrawn
            chunks[0] = chunks[0][written:]
            tickets[0] = 0
        if self._queued < self._limit:
            self._has_room.set()
        if not chunks:
            self._flushed.set()

    def _write_now(self, data: bytes) -> bytes:
        """Write what the socket takes at once; return the rest."""
        assert self._fd is not None
        self._read_since_write = False
        self._last_write = time.monotonic()
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return data  # the writer task meets the error and ends the connection
        self.bytes_written += written
        return data[written:]

    def note_read(self) -> None:
        """Something was read: the next packet is probably its answer."""
        self._read_since_write = True

    @property
    def has_room(self) -> bool:
        """True while less than ``limit`` bytes are queued (and not closed)."""
        return self._queued < self._limit and not self._closed

    async def wait_room(self) -> None:
        """Wait until less than ``limit`` bytes are queued. A checkpoint.

        Raises:
            anyio.BrokenResourceError: the writer is closed.
        """
        await self._checkpoint_if_cancelled()
        while self._queued >= self._limit and not self._closed:
            await self._has_room.wait()
        if self._closed:
            raise anyio.BrokenResourceError("the relay connection is closed")

    async def send(self, packet: Packet) -> None:
        """Queue ``packet`` once it fits within the limit (a packet larger than
        the limit waits for an empty queue). A checkpoint."""
        data = encode(packet)
        while self._queued and self._queued + len(data) > self._limit and not self._closed:
            if self._has_room.is_set():
                self._has_room = self._event()
            await self._has_room.wait()
        self.send_bytes_nowait(data)
        await self._checkpoint_if_cancelled()

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
                self._has_data = self._event()
                continue
            data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = []
            self._tickets = []
            self._queued = 0
            self._has_room.set()
            self._sending = True
            try:
                await self._send_all(data)
            except BaseException:
                self.close()
                raise
            finally:
                self._sending = False
            self._last_write = time.monotonic()
            self.bytes_written += len(data)
            if not self._chunks:
                self._flushed.set()
                if self._closed:
                    return
                self._has_data = self._event()

"""The encrypted record layer, usable as a plain :class:`trio.abc.Stream`.

After the handshake every byte travels in records: a 2-byte big-endian length
followed by a ChaCha20-Poly1305 ciphertext of at most 65535 bytes, under the
Noise transport cipher of that direction (counter nonces, so a replayed,
dropped, duplicated or reordered record fails authentication). A record whose
plaintext is empty is the authenticated end of the stream: a connection that
ends without it was truncated and raises :class:`trio.BrokenResourceError`.

Both sides rekey a direction after every ``rekey_interval`` records of it; the
schedule is implicit (counted on both ends), so rekeying costs no signalling.
"""

from __future__ import annotations

import operator
import os
import struct
from typing import Final

import trio

from ..crypto.aead import TAG_SIZE, AuthenticationError
from ..crypto.noise import CipherState, NonceExhaustedError
from ..errors import ProtocolError
from ..wire.framing import MAX_RECORD_SIZE, LengthPrefixedReader

__all__ = ["MAX_RECORD_PLAINTEXT", "SecureStream", "StreamTruncatedError"]

#: Largest plaintext one record carries.
MAX_RECORD_PLAINTEXT: Final = MAX_RECORD_SIZE - TAG_SIZE
_RECEIVE_SIZE: Final = 256 * 1024
_U16 = struct.Struct(">H")


class StreamTruncatedError(Exception):
    """The connection ended without the authenticated end record: the peer died,
    the path broke, or someone cut the stream. Not a protocol violation as such."""


class SecureStream(trio.abc.Stream):
    """A :class:`trio.abc.Stream` of plaintext over encrypted records.

    Usually created by :func:`iris_trio.transport.open_secure_stream` or by a
    link; constructing one directly takes the cipher states of a completed
    handshake.

    Args:
        transport_stream: the underlying byte stream (TCP, memory, ...).
        send_cipher: cipher state for records this side sends.
        receive_cipher: cipher state for records this side receives.
        record_reader: the reader used during the handshake, holding any
            bytes that arrived after it.
        pending_records: complete records that arrived with the last
            handshake message.
        rekey_interval: records per direction between rekeys.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        send_cipher: CipherState,
        receive_cipher: CipherState,
        *,
        record_reader: LengthPrefixedReader | None = None,
        pending_records: list[bytes] | None = None,
        rekey_interval: int = 1 << 20,
        close_timeout: float = 2.0,
    ) -> None:
        self.transport_stream = transport_stream
        self._send_cipher = send_cipher
        self._receive_cipher = receive_cipher
        self._records = record_reader or LengthPrefixedReader(2, MAX_RECORD_SIZE)
        self._pending_records = list(pending_records or ())
        self._rekey_interval = rekey_interval
        self._close_timeout = close_timeout
        self._plaintext: list[bytes | bytearray] = []
        # Eager writes (see write_now): the socket's descriptor, when the transport
        # is a socket stream, and sealed bytes the socket did not take at once.
        socket = getattr(transport_stream, "socket", None)
        self._socket: trio.socket.SocketType | None = socket
        self._fd: int | None = socket.fileno() if socket is not None else None
        self._unsent: memoryview | None = None
        self._drained = False  # the last read from the socket emptied it
        self._sending = False
        self._receiving = False
        self._closed = False
        self._send_broken: BaseException | None = None
        self._receive_error: BaseException | None = None
        self._end_received = False
        #: Records sent and received so far (for statistics).
        self.records_sent = 0
        self.records_received = 0

    # ---------------------------------------------------------------- sending

    def _seal(self, data: bytes | bytearray | memoryview) -> bytearray:
        """Encrypt ``data`` as records straight into one output buffer."""
        view = memoryview(data)
        size = len(view)
        records = -(-size // MAX_RECORD_PLAINTEXT)
        out = bytearray(size + records * (2 + TAG_SIZE))
        cipher = self._send_cipher
        position = 0
        for offset in range(0, size, MAX_RECORD_PLAINTEXT):
            chunk = view[offset : offset + MAX_RECORD_PLAINTEXT]
            _U16.pack_into(out, position, len(chunk) + TAG_SIZE)
            position += 2 + cipher.encrypt_into(b"", chunk, out, position + 2)
            self._count_sent()
        return out

    def _seal_or_break(self, data: bytes | bytearray | memoryview) -> bytearray:
        try:
            return self._seal(data)
        except NonceExhaustedError as exc:
            self._send_broken = exc
            raise trio.BrokenResourceError("record nonces exhausted") from exc

    def _count_sent(self) -> None:
        self.records_sent += 1
        if self.records_sent % self._rekey_interval == 0:
            self._send_cipher.rekey()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` into records and send them.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the connection failed (now or earlier).
        """
        if self._sending:
            raise trio.BusyResourceError("another task is using this stream for sending")
        if self._closed:
            raise trio.ClosedResourceError("the secure stream was closed")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._send_broken is not None:
                raise trio.BrokenResourceError("the secure stream is broken") from (
                    self._send_broken
                )
            if not data:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            wire = self._seal_or_break(data)
            try:
                if self._unsent is not None:  # what an eager write left, first
                    unsent, self._unsent = self._unsent, None
                    await self.transport_stream.send_all(unsent)
                await self.transport_stream.send_all(wire)
            except BaseException as exc:
                # A partial write (cancellation included) desynchronises the record
                # stream for good.
                self._send_broken = exc
                raise
        finally:
            self._sending = False

    @property
    def has_unsent(self) -> bool:
        """True when an eager write left bytes that :meth:`flush` must send."""
        return self._unsent is not None

    @property
    def can_write_now(self) -> bool:
        """True when :meth:`write_now` would write (it would not return False)."""
        return self._fd is not None and not self._sending and self._unsent is None

    def write_now(self, data: bytes) -> bool:
        """Encrypt ``data`` and write it to the socket without waiting, if possible.

        Returns False (nothing done) when the transport is not a socket or a
        send is under way. Otherwise the records are written as far as the
        socket takes them at once; the rest is kept, in order, for the next
        :meth:`send_all` or :meth:`flush`.

        Raises:
            trio.ClosedResourceError / trio.BrokenResourceError: as :meth:`send_all`.
        """
        if self._fd is None or self._sending or self._unsent is not None:
            return False
        if self._closed:
            raise trio.ClosedResourceError("the secure stream was closed")
        if self._send_broken is not None:
            raise trio.BrokenResourceError("the secure stream is broken") from self._send_broken
        wire = self._seal_or_break(data)
        try:
            written = os.write(self._fd, wire)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._send_broken = exc
            raise trio.BrokenResourceError("the connection failed") from exc
        if written < len(wire):
            self._unsent = memoryview(wire)[written:]
        return True

    async def flush(self) -> None:
        """Send what an eager write left unsent (if anything)."""
        if self._sending:
            raise trio.BusyResourceError("another task is using this stream for sending")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._unsent is not None:
                unsent, self._unsent = self._unsent, None
                try:
                    await self.transport_stream.send_all(unsent)
                except BaseException as exc:
                    self._send_broken = exc
                    raise
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport can probably take more data."""
        if self._sending:
            raise trio.BusyResourceError("another task is using this stream for sending")
        if self._closed:
            raise trio.ClosedResourceError("the secure stream was closed")
        self._sending = True
        try:
            await self.transport_stream.wait_send_all_might_not_block()
        finally:
            self._sending = False

    # -------------------------------------------------------------- receiving

    async def _read_socket(self, socket: trio.socket.SocketType, fd: int) -> bytes:
        """The next bytes from the socket (a checkpoint). When the last read
        emptied it, wait until it is readable first instead of trying a read
        that finds nothing (a system call and an exception per read on a link
        that answers one message at a time)."""
        if self._drained:
            await trio.lowlevel.wait_readable(fd)
        else:
            await trio.lowlevel.checkpoint()
        while True:
            if self._closed or socket.fileno() != fd:  # (closed while this waited)
                raise trio.ClosedResourceError("the secure stream was closed")
            try:
                data = os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("the secure stream was closed") from None
                raise trio.BrokenResourceError(f"the connection failed: {exc}") from exc
            self._drained = len(data) < _RECEIVE_SIZE
            return data

    def _open_records(self, records: list[bytes] | list[memoryview]) -> None:
        """Decrypt ``records`` into one plaintext buffer, stopping at the first bad one."""
        if not records or self._end_received:
            return  # bytes after the authenticated end are ignored: nothing more is read
        out = bytearray(max(0, sum(map(len, records)) - TAG_SIZE * len(records)))
        cipher = self._receive_cipher
        position = 0
        for record in records:
            size = self._decrypt(cipher, record, out, position)
            if size < 0:
                break
            self.records_received += 1
            if self.records_received % self._rekey_interval == 0:
                cipher.rekey()
            if size == 0:
                self._end_received = True
                break
            position += size
        if position:
            del out[position:]
            self._plaintext.append(out)

    def _fail_record(self, exc: Exception) -> None:
        self._receive_error = ProtocolError(f"record {self.records_received} failed authentication")
        self._receive_error.__cause__ = exc

    def _decrypt(
        self, cipher: CipherState, record: bytes | memoryview, out: bytearray, position: int
    ) -> int:
        try:
            return cipher.decrypt_into(b"", record, out, position)
        except (AuthenticationError, NonceExhaustedError) as exc:
            self._fail_record(exc)
            return -1

    def _take(self, max_bytes: int | None) -> bytes | bytearray:
        chunks = self._plaintext
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if max_bytes is not None and len(data) > max_bytes:
            chunks.append(data[max_bytes:])
            data = data[:max_bytes]
        return data

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return decrypted bytes; ``b""`` after the peer's authenticated close.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: a record failed authentication (its cause
                is a :class:`~iris_trio.errors.ProtocolError`), the connection was
                truncated, or it failed.
        """
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is using this stream for receiving")
        if self._closed:
            raise trio.ClosedResourceError("the secure stream was closed")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._pending_records:
                pending, self._pending_records = self._pending_records, []
                self._open_records(pending)
            if self._plaintext:
                await trio.lowlevel.cancel_shielded_checkpoint()
            while not self._plaintext:
                if self._receive_error is not None:
                    raise trio.BrokenResourceError(str(self._receive_error)) from (
                        self._receive_error
                    )
                if self._end_received:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                if self._socket is None or self._fd is None:
                    data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
                else:
                    data = await self._read_socket(self._socket, self._fd)
                if not data:
                    self._receive_error = StreamTruncatedError(
                        "connection ended without an authenticated close (truncated)"
                    )
                    continue
                self._open_records(list(self._records.feed(data)))
            return self._take(max_bytes)
        finally:
            self._receiving = False

    # ---------------------------------------------------------------- closing

    async def abort(self) -> None:
        """Close without the end record: the peer sees a broken stream, not a clean end."""
        self._closed = True
        await trio.aclose_forcefully(self.transport_stream)

    async def aclose(self) -> None:
        """Send the authenticated end-of-stream record (best effort) and close.

        Like every trio ``aclose``, this closes even when cancelled (then without
        the end record).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._send_broken is None and not self._sending:
                with trio.move_on_after(self._close_timeout):
                    try:
                        if self._unsent is not None:
                            unsent, self._unsent = self._unsent, None
                            await self.transport_stream.send_all(unsent)
                        end = self._send_cipher.encrypt_with_ad(b"", b"")
                        await self.transport_stream.send_all(_U16.pack(len(end)) + end)
                    except (
                        trio.BrokenResourceError,
                        trio.ClosedResourceError,
                        NonceExhaustedError,
                    ):
                        pass
        finally:
            await self.transport_stream.aclose()

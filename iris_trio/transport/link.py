"""Secure links: frames over an encrypted stream, as a small trio task tree.

A link owns one nursery with two tasks. The *reader* decrypts records, cuts
the plaintext into frames (4-byte length prefix), decodes them strictly and
hands each to the link's consumer. The *writer* drains a bounded queue of
encoded frames and joins as many as fit into one ``send_all``, which the
secure stream cuts into records of up to 64 KiB: under load many frames share
one AEAD operation and one system call. An idle writer sends keepalives; a
link that hears nothing for ``idle_timeout`` declares the peer dead.

Silence is what the peer did, not what this side got round to: it is counted
only while the reader is waiting for data (not while it works through what
arrived, nor while this process was too busy to run it), and data waiting
unread in the socket is no silence either. So a node that spent a long turn
on other work does not declare its peers dead for it.

Failures of the peer or the network never escape the link's tasks: they end
the link and are kept as :attr:`Link.close_reason`; operations then raise
trio's resource errors. A frame that violates the protocol closes this link
only, and is counted and logged once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import select
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from .._util import open_unwrapped_nursery
from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from ..errors import HandshakeError, ProtocolError
from ..wire.frames import Frame, FrameCodec, Hello, Keepalive
from ..wire.framing import LengthPrefixedReader
from .config import LinkConfig
from .handshake import HandshakeResult, log_handshake_failure, perform_handshake
from .secure_stream import SecureStream

__all__ = ["Link", "LinkStatistics", "open_link", "run_link"]

log = logging.getLogger("iris_trio.transport")

SOFTWARE: Final = "iris-trio/0.1"
#: A frame is written at once, without the writer task, when something was read
#: since the last write or nothing was written for this long (seconds); other
#: frames are batched by the writer.
_EAGER_IDLE = 1e-3
#: Frames queued in one scheduler turn that are written at once, without
#: waiting for the writer task.
_EAGER_FRAMES = 16
#: The writer yields to other tasks at least once per this many bytes written.
_WRITER_YIELD_BYTES = 1 << 20
#: Largest frame :meth:`Link.send_control_nowait` takes, encoded.
_CONTROL_FRAME_LIMIT = 256
_U32 = struct.Struct(">I")

#: Push-mode consumer: called by the reader task with (link, frame), synchronously.
FrameHandler = Callable[["Link", Frame], None]


class PeerSilentError(Exception):
    """Nothing was received from the peer within the idle timeout."""


class WriteTimeoutError(Exception):
    """A write made no progress within the write timeout."""


@dataclasses.dataclass(frozen=True, slots=True)
class LinkStatistics:
    """A snapshot of one link's counters."""

    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    records_sent: int
    records_received: int
    keepalives_sent: int
    queued_frames: int
    queued_bytes: int


class Link:
    """An authenticated, encrypted channel of frames to one peer.

    Obtain one from :func:`open_link` (or a link listener); do not construct
    it directly. ``send``/``send_nowait`` queue frames for the writer task;
    frames arrive either through :meth:`receive` (pull mode) or through the
    ``on_frame`` callback given when the link was opened (push mode, called
    synchronously by the reader task; raising :class:`ProtocolError` from it
    closes the link).

    Attributes:
        peer_id: the peer's 16-byte node id (proven by the handshake).
        peer_node: the same id as an integer (as the overlay names nodes).
        peer_public_key: the peer's static X25519 public key.
        peer_hello: the hello the peer sent.
        handshake_hash: the Noise transcript hash.
        remote_address: "host:port" of the peer's socket, when known.
    """

    def __init__(
        self,
        secure: SecureStream,
        handshake: HandshakeResult,
        config: LinkConfig,
        *,
        codec: FrameCodec,
        on_frame: FrameHandler | None,
        remote_address: str | None,
    ) -> None:
        self.peer_id = handshake.peer_id
        self.peer_node = int.from_bytes(handshake.peer_id, "big")
        self.peer_public_key = handshake.peer_public_key
        self.peer_hello = handshake.peer_hello
        self.handshake_hash = handshake.handshake_hash
        self.remote_address = remote_address
        self.config = config
        self._secure = secure
        self._codec = codec
        self._on_frame = on_frame
        self._frame_reader = LengthPrefixedReader(4, config.max_frame_size)
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_frames_limit = config.send_queue_frames
        self._queue_bytes_limit = config.send_queue_bytes
        self._queued_bytes = 0
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._inbox_send, self._inbox = trio.open_memory_channel[Frame](config.receive_queue_frames)
        self._closing = False
        self._close_reason: BaseException | None = None
        self._remote_closed = False
        self._finished = trio.Event()
        self._tasks_left = 2
        self._keepalive = _U32.pack(len(e := codec.encode(Keepalive()))) + e
        self._frames_sent = 0
        self._frames_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._keepalives_sent = 0
        self._last_write = self._last_read = trio.current_time()
        # Since when the reader waits for data (None: it is working on data).
        self._listening_since: float | None = None
        self._read_since_write = False
        self._eager_part = True  # (see _enqueue)

    def __repr__(self) -> str:
        return f"<Link to {self.peer_id.hex()[:12]} at {self.remote_address or '?'}>"

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        """True until the link is closing, closed or broken."""
        return not (self._closing or self._close_reason is not None or self._remote_closed)

    @property
    def last_read(self) -> float:
        """The trio time of the latest read that brought data: when the frames
        being handled now arrived."""
        return self._last_read

    @property
    def silent_for(self) -> float:
        """Seconds the peer has been silent: how long the reader has been waiting
        for data with nothing arriving; 0 while it works through what arrived
        or data waits unread. What liveness checks should judge a peer by."""
        silent = self._silence()
        if silent > 0 and _readable(self._secure.transport_stream):
            return 0.0  # the peer spoke; our reader has not run yet
        return silent

    def _silence(self) -> float:
        since = self._listening_since
        if since is None:
            return 0.0
        return max(trio.current_time() - max(since, self._last_read), 0.0)

    @property
    def close_reason(self) -> BaseException | None:
        """Why the link broke (``None`` while healthy and after a clean close)."""
        return self._close_reason

    @property
    def queued(self) -> tuple[int, int]:
        """Bytes and frames queued for sending now (as :meth:`statistics`
        says, without building the snapshot: for a check per frame)."""
        return self._queued_bytes, len(self._queue)

    @property
    def bytes_sent(self) -> int:
        """Bytes written so far (as :meth:`statistics` says)."""
        return self._bytes_sent

    def statistics(self) -> LinkStatistics:
        """A snapshot of the link's counters."""
        return LinkStatistics(
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            records_sent=self._secure.records_sent,
            records_received=self._secure.records_received,
            keepalives_sent=self._keepalives_sent,
            queued_frames=len(self._queue),
            queued_bytes=self._queued_bytes,
        )

    def _check_sendable(self) -> None:
        if self._closing:
            raise trio.ClosedResourceError("the link was closed")
        if self._close_reason is not None:
            raise trio.BrokenResourceError(f"the link is broken: {self._close_reason}") from (
                self._close_reason
            )
        if self._remote_closed:
            raise trio.BrokenResourceError("the peer closed the link")

    def _fail(self, reason: BaseException) -> None:
        """Record the first failure and wake everyone waiting on the link."""
        if self._close_reason is None and not self._closing:
            self._close_reason = reason
            if isinstance(reason, ProtocolError):
                log.warning("closing link to %s: protocol violation: %s", self, reason)
            else:
                log.info("link to %s broken: %s", self, reason)
        self._wake_all()

    def _wake_all(self) -> None:
        self._writer_lot.unpark_all()
        self._space_lot.unpark_all()
        self._inbox_send.close()

    # ---------------------------------------------------------------- sending

    def send_nowait(self, frame: Frame) -> None:
        """Queue ``frame`` for sending without waiting.

        Raises:
            trio.WouldBlock: the send queue is full.
            trio.ClosedResourceError: the link was closed locally.
            trio.BrokenResourceError: the link failed or the peer closed it.
            MessageTooLargeError / ValueError: the frame is invalid or too large.
        """
        if not self.is_open:
            self._check_sendable()
        self._enqueue(self._codec.encode_framed(frame))

    def send_encoded_nowait(self, encoded: bytes) -> None:
        """Queue an already encoded frame (e.g. one being forwarded) without waiting.

        The caller guarantees ``encoded`` is a valid frame no larger than the limit.
        Raises like :meth:`send_nowait`.
        """
        self._check_sendable()
        self._enqueue(_U32.pack(len(encoded)) + encoded)

    def send_control_nowait(self, frame: Frame) -> None:
        """Queue a small control frame (a credit, a close) even when the queue is full.

        Control frames must never be lost to backpressure (a lost credit stalls
        its sender for good); they are few and small, so memory stays bounded.

        Raises:
            trio.ClosedResourceError / trio.BrokenResourceError: as :meth:`send_nowait`.
            ValueError: the frame is larger than 256 bytes encoded.
        """
        self._check_sendable()
        framed = self._codec.encode_framed(frame)
        if len(framed) > _CONTROL_FRAME_LIMIT:
            raise ValueError(f"a control frame of {len(framed)} bytes is too large")
        self._enqueue(framed, force=True)

    def _enqueue(self, framed: bytes, *, force: bool = False) -> None:
        queue = self._queue
        if (
            not queue
            and (self._read_since_write or trio.current_time() - self._last_write >= _EAGER_IDLE)
            and self._secure.write_now(framed)
        ):
            # Written at once: an answer to what was just read, or a frame on a
            # quiet link, costs no task switch. Frames that follow other writes
            # closely (a stream) queue up and go out in batches.
            self._read_since_write = False
            self._last_write = trio.current_time()
            self._frames_sent += 1
            self._bytes_sent += len(framed)
            if self._secure.has_unsent:
                self._writer_lot.unpark()  # the socket was full: the writer finishes
            return
        size = len(framed)
        if (
            queue
            and not force
            and (
                len(queue) >= self._queue_frames_limit
                or self._queued_bytes + size > self._queue_bytes_limit
            )
        ):
            raise trio.WouldBlock
        queue.append(framed)
        self._queued_bytes += size
        self._frames_sent += 1
        if len(queue) == 1:
            self._writer_lot.unpark()
        elif len(queue) >= _EAGER_FRAMES and self._eager_part and self._secure.can_write_now:
            # The start of a burst (e.g. 64 requests sent in one scheduler
            # turn) goes out at once, the rest with the writer: the peer starts
            # on the first part while this side makes the rest (once per turn
            # of the writer, so that a stream still goes out in large writes).
            self._eager_part = False
            batch = self._take_batch()
            try:
                self._secure.write_now(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._writer_lot.unpark()  # the writer ends the link
                raise
            self._last_write = trio.current_time()
            self._bytes_sent += len(batch)
            self._space_lot.unpark_all()
            if self._secure.has_unsent:
                self._writer_lot.unpark()

    async def send(self, frame: Frame) -> None:
        """Queue ``frame``, waiting while the send queue is full (link backpressure).

        This is a checkpoint. Raises like :meth:`send_nowait`, except WouldBlock.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        framed = self._codec.encode_framed(frame)
        while True:
            try:
                self._check_sendable()
                self._enqueue(framed)
            except trio.WouldBlock:
                await self._space_lot.park()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return

    @property
    def has_send_capacity(self) -> bool:
        """True while the send queue is less than half full (see :meth:`wait_send_capacity`)."""
        return (
            len(self._queue) * 2 < self._queue_frames_limit
            and self._queued_bytes * 2 < self._queue_bytes_limit
        )

    async def wait_send_capacity(self) -> None:
        """Wait until the send queue is less than half full (for pacing producers).

        Raises like :meth:`send_nowait` if the link closes or breaks meanwhile.
        """
        while not self.has_send_capacity:
            self._check_sendable()
            await self._space_lot.park()
        self._check_sendable()
        await trio.lowlevel.checkpoint()

    async def wait_send_queue_empty(self) -> None:
        """Wait until every queued frame was handed to the transport."""
        while self._queue:
            self._check_sendable()
            await self._space_lot.park()
        await trio.lowlevel.checkpoint()

    # -------------------------------------------------------------- receiving

    async def receive(self) -> Frame:
        """Return the next frame (pull mode).

        Raises:
            trio.EndOfChannel: the peer closed the link cleanly.
            trio.ClosedResourceError: the link was closed locally.
            trio.BrokenResourceError: the link failed.
            RuntimeError: the link delivers through an ``on_frame`` callback.
        """
        if self._on_frame is not None:
            raise RuntimeError("this link delivers frames to its on_frame callback")
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            if self._close_reason is not None:
                raise trio.BrokenResourceError(f"the link is broken: {self._close_reason}") from (
                    self._close_reason
                )
            if self._closing:
                raise trio.ClosedResourceError("the link was closed") from None
            raise

    def __aiter__(self) -> Link:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    # ---------------------------------------------------------------- closing

    async def aclose(self) -> None:
        """Close gracefully: flush queued frames, send the authenticated end, close.

        Pending and later operations raise :class:`trio.ClosedResourceError`.
        The flush is bounded by ``close_timeout``; the link's tasks are gone
        when this returns (if the link runs under :func:`open_link`).
        """
        if not self._closing:
            self._closing = True
            self._wake_all()
        with trio.move_on_after(self.config.close_timeout) as scope:
            scope.shield = True
            await self._finished.wait()
        if not self._finished.is_set():
            await trio.aclose_forcefully(self._secure.transport_stream)

    async def wait_closed(self) -> None:
        """Wait until the link has ended (closed by either side or broken)."""
        await self._finished.wait()

    # ------------------------------------------------------------------ tasks

    def _task_done(self) -> None:
        self._tasks_left -= 1
        if self._tasks_left == 0:
            self._finished.set()

    async def _run_reader(self) -> None:
        secure, codec, reader = self._secure, self._codec, self._frame_reader
        try:
            while True:
                self._listening_since = trio.current_time()
                data = await secure.receive_some()
                self._listening_since = None
                self._last_read = trio.current_time()  # the writer watches for silence
                if not data:
                    self._remote_closed = True
                    return
                self._bytes_received += len(data)
                self._read_since_write = True
                frames = 0
                for body in reader.feed(data):
                    frame = codec.decode(body)
                    if type(frame) is Keepalive:
                        continue
                    frames += 1
                    self._frames_received += 1
                    if self._on_frame is not None:
                        self._on_frame(self, frame)
                    else:
                        await self._inbox_send.send(frame)
                if frames > 1:
                    # Several frames read: their answers go out together, with
                    # the writer (not the first alone, at once).
                    self._read_since_write = False
        except trio.ClosedResourceError:
            pass  # closed locally (stream or inbox)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            self._fail(cause if isinstance(cause, ProtocolError) else exc)
        except ProtocolError as exc:
            self._fail(exc)
        finally:
            # The reader ending (clean end, failure) ends the link: wake the writer.
            self._wake_all()
            self._task_done()

    def _check_silence(self) -> None:
        """The peer must be heard from (any record: keepalives are sent when idle)."""
        silent = self._silence()
        if silent > self.config.idle_timeout and not _readable(self._secure.transport_stream):
            raise PeerSilentError(f"nothing received for {silent:.1f} s")

    def _until_silent(self) -> float:
        """Seconds until the peer counts as silent, if it stays quiet."""
        since = self._listening_since
        heard = trio.current_time() if since is None else max(since, self._last_read)
        return heard + self.config.idle_timeout - trio.current_time()

    def _take_batch(self) -> bytes:
        queue = self._queue
        limit = self.config.coalesce_bytes
        parts = [queue.popleft()]
        size = len(parts[0])
        while queue and size + len(queue[0]) <= limit:
            item = queue.popleft()
            parts.append(item)
            size += len(item)
        self._queued_bytes -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _run_writer(self) -> None:
        # Shielded: when the link's owner is cancelled (the node is stopping), what
        # is queued still goes out; the owner's aclose() ends the writer (flush,
        # then the end record), bounded by close_timeout, then a forceful close.
        with trio.CancelScope(shield=True):
            await self._write_until_closed()

    async def _write_until_closed(self) -> None:
        secure = self._secure
        config = self.config
        unyielded = 0  # bytes written straight to the socket since the last yield
        try:
            while self._close_reason is None and not self._remote_closed:
                if not self._queue:
                    if secure.has_unsent:  # an eager write the socket did not take whole
                        with _write_scope(config.write_timeout) as scope:
                            await secure.flush()
                        if scope.cancelled_caught:
                            raise trio.TooSlowError
                        continue
                    if self._closing:
                        break
                    self._check_silence()
                    # (Past already when data waits unread after a freeze: look
                    # again shortly; the reader will have run by then.)
                    until_silent = max(self._until_silent(), 0.01)
                    wait = min(config.keepalive_interval, until_silent + 1e-3)
                    with trio.CancelScope(deadline=trio.current_time() + wait):
                        await self._writer_lot.park()
                    self._eager_part = True  # (see _enqueue)
                    self._check_silence()
                    if self._close_reason is not None or self._remote_closed:
                        break
                    if not self._queue:
                        if self._closing:
                            break
                        quiet = trio.current_time() - self._last_write
                        if secure.has_unsent or quiet < config.keepalive_interval:
                            continue  # eager writes kept the link busy
                        self._queue.append(self._keepalive)
                        self._queued_bytes += len(self._keepalive)
                        self._keepalives_sent += 1
                batch = self._take_batch()
                self._eager_part = True
                if secure.can_write_now:
                    # Straight to the socket: no scheduler turn after a write the
                    # socket took whole (trio's send yields after each); one
                    # each _WRITER_YIELD_BYTES written so, for the others' sake.
                    secure.write_now(batch)
                    unyielded += len(batch)
                    if secure.has_unsent:
                        unyielded = 0
                        with _write_scope(config.write_timeout) as scope:
                            await secure.flush()
                        if scope.cancelled_caught:
                            raise trio.TooSlowError
                    elif unyielded >= _WRITER_YIELD_BYTES:
                        unyielded = 0
                        await trio.lowlevel.cancel_shielded_checkpoint()
                else:
                    with _write_scope(config.write_timeout) as scope:
                        await secure.send_all(batch)
                    if scope.cancelled_caught:
                        raise trio.TooSlowError
                self._last_write = trio.current_time()
                self._read_since_write = False
                self._bytes_sent += len(batch)
                self._space_lot.unpark_all()
                self._check_silence()
        except PeerSilentError as exc:
            self._fail(exc)
        except trio.TooSlowError:
            self._fail(WriteTimeoutError(f"no write progress for {config.write_timeout:g} s"))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if not self._closing:
                self._fail(exc)
        finally:
            self._queue.clear()
            self._queued_bytes = 0
            self._space_lot.unpark_all()
            # A clean end (the authenticated end record) only for a clean close: a
            # broken link aborts, so the peer sees an error too, never a clean end.
            # Either way the transport closes, which also ends the reader.
            if self._close_reason is None:
                await secure.aclose()
            else:
                await secure.abort()
            self._task_done()


def _write_scope(timeout: float) -> trio.CancelScope:
    """A scope that ends a write making no progress for ``timeout`` (a plain
    scope: trio.fail_after is a generator-based context manager, dearer per write)."""
    return trio.CancelScope(deadline=trio.current_time() + timeout)


async def run_link(
    link: Link, *, task_status: trio.TaskStatus[Link] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``link``'s reader and writer until the link ends (internal building block)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link._run_reader)
        nursery.start_soon(link._run_writer)
        task_status.started(link)


def _readable(stream: trio.abc.Stream) -> bool:
    """True if data waits unread in ``stream``'s socket (False without one)."""
    socket = getattr(stream, "socket", None)
    if socket is None:
        return False
    try:
        if not hasattr(select, "poll"):  # Windows
            return bool(select.select([socket.fileno()], [], [], 0)[0])
        poller = select.poll()
        poller.register(socket.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile
        return False


def _address_of(stream: trio.abc.Stream) -> str | None:
    socket = getattr(stream, "socket", None)
    if socket is None:
        return None
    try:
        host, port = socket.getpeername()[:2]
    except OSError:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@asynccontextmanager
async def established_link(
    stream: trio.abc.Stream,
    handshake: HandshakeResult,
    *,
    config: LinkConfig,
    codec: FrameCodec,
    on_frame: FrameHandler | None = None,
) -> AsyncIterator[Link]:
    """Run a link over ``stream`` after a completed handshake; close it on exit."""
    secure = SecureStream(
        stream,
        handshake.send_cipher,
        handshake.receive_cipher,
        record_reader=handshake.record_reader,
        pending_records=handshake.pending_records,
        rekey_interval=config.rekey_interval,
        close_timeout=config.close_timeout,
    )
    link = Link(
        secure,
        handshake,
        config,
        codec=codec,
        on_frame=on_frame,
        remote_address=_address_of(stream),
    )
    async with open_unwrapped_nursery() as nursery:
        await nursery.start(run_link, link)
        try:
            yield link
        finally:
            await link.aclose()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_link(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    identity: NodeIdentity,
    network: Network,
    config: LinkConfig | None = None,
    listen: str = "",
    on_frame: FrameHandler | None = None,
) -> AsyncIterator[Link]:
    """Handshake over ``stream`` and run a secure link for the ``async with`` body.

    Args:
        stream: a connected byte stream; the link owns and closes it.
        initiator: True on the side that opened the connection.
        identity: this node's static key pair.
        network: the network (name and key) both sides must share.
        config: limits and deadlines.
        listen: the address this node accepts links on, told to the peer.
        on_frame: push-mode consumer; without it use :meth:`Link.receive`.

    Raises:
        HandshakeError: the handshake failed (the stream is closed); its text
            names the likely cause, and it is logged (a WARNING, rate-limited
            per remote address).

    On exit the link is closed gracefully (bounded by ``close_timeout``).
    """
    config = config or LinkConfig()
    codec = FrameCodec(config.max_frame_size)
    hello = Hello(software=SOFTWARE, listen=listen, max_frame_size=config.max_frame_size)
    try:
        handshake = await perform_handshake(
            stream,
            initiator=initiator,
            identity=identity,
            network=network,
            hello=hello,
            timeout=config.handshake_timeout,
            codec=codec,
        )
    except HandshakeError as exc:
        log_handshake_failure(stream, exc, initiator=initiator)
        await trio.aclose_forcefully(stream)
        raise
    async with established_link(
        stream, handshake, config=config, codec=codec, on_frame=on_frame
    ) as link:
        yield link

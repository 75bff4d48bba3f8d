"""Tunnels: ordered, reliable, flow-controlled message channels between two nodes.

A tunnel's frames travel on the direct link between its two ends. Each end
names the tunnel by its own random id, and every frame carries the id of the
end it is for. Flow control is a byte allowance, as in Iris: an end may start
a message while its allowance is positive and then sends the whole message
(in pieces of at most :data:`CHUNK_SIZE`), so a half-sent message never blocks
the stream; the receiver gives allowance back as the application takes
messages. A receiver therefore buffers at most its window plus one message.

Frames carry sequence numbers, so frames that crossed on two links to the same
peer (when a duplicate link is retired) are put back in order.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from types import TracebackType
from typing import Final, Protocol

import trio

from .._util import receive_parked
from ..errors import ProtocolError
from ..wire.frames import Frame
from .queue import BoundedQueue, Overflow
from .tunnel_frames import CHUNK_SIZE, TunnelAllow, TunnelClose, TunnelData

__all__ = ["DEFAULT_WINDOW", "IncomingTunnels", "Tunnel", "TunnelPath", "TunnelStatistics"]

#: Bytes an end buffers for its reader before the sender waits (as the Iris node).
DEFAULT_WINDOW: Final = 4 * 1024 * 1024
#: Sends between two yields to the scheduler when none has to wait.
_YIELD_EVERY: Final = 64
#: Frames held back waiting for an earlier one before the peer is deemed broken.
_MAX_EARLY_FRAMES: Final = 1 << 16


class TunnelPath(Protocol):
    """What a tunnel sends on: a link, or the in-process path of a node to itself."""

    @property
    def is_open(self) -> bool: ...

    @property
    def has_send_capacity(self) -> bool: ...

    async def wait_send_capacity(self) -> None: ...

    def send_nowait(self, frame: Frame) -> None: ...

    def send_control_nowait(self, frame: Frame) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class TunnelStatistics:
    """Counters of one tunnel end (from :meth:`Tunnel.statistics`).

    Attributes:
        messages_sent / bytes_sent: whole messages (and their bytes) sent.
        messages_received / bytes_received: whole messages (and their bytes)
            received (taken by ``receive()``).
        buffered_bytes: bytes arrived and not yet received (a message still
            arriving included).
        allowance: bytes this end may still send before the far end's buffer
            is full (``send()`` waits at 0).

    Example::

        figures = tunnel.statistics()
        print(f"{figures.bytes_sent:,} bytes out; {figures.allowance:,} may go now")
    """

    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    buffered_bytes: int
    allowance: int


class Tunnel(trio.abc.Channel[bytes]):
    """One end of a tunnel: a ``trio.abc.Channel[bytes]``.

    ``receive()`` raises ``trio.EndOfChannel`` once the far end closed cleanly
    and everything it sent was read, and ``trio.BrokenResourceError`` when the
    far end failed or the path to it broke. ``send()`` waits while the far end's
    buffer is full, and raises ``trio.BrokenResourceError`` once the far end is
    gone or closed. Leaving ``async with tunnel`` with an exception (or by
    cancellation) closes it abnormally: the far end sees an error, not an end.
    """

    def __init__(
        self,
        local_id: bytes,
        remote_id: bytes,
        peer: int,
        *,
        path: Callable[[], TunnelPath | None],
        allowance: int,
        window: int = DEFAULT_WINDOW,
        on_close: Callable[[Tunnel], None],
    ) -> None:
        self.local_id = local_id
        self.remote_id = remote_id
        self.peer = peer
        self._path = path
        self._on_close = on_close
        self._window = window
        self._return_threshold = max(1, window // 4)
        # Sending.
        self._allowance = allowance
        self._send_lock = trio.Lock()
        self._send_sequence = 0
        self._allowance_lot = trio.lowlevel.ParkingLot()
        # Receiving.
        self._expected = 0
        self._early: dict[int, TunnelData | TunnelClose] = {}
        self._partial: list[bytes] = []
        self._partial_size: int | None = None
        self._partial_got = 0
        self._messages: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._peer_allowance = window  # what the far end may still send, as we know it
        self._to_return = 0
        self._receive_lot = trio.lowlevel.ParkingLot()
        # Ends.
        self._far_end_closed = False
        self._broken: str | None = None
        self._closed = False
        self._messages_sent = self._bytes_sent = 0
        self._messages_received = self._bytes_received = 0

    def __repr__(self) -> str:
        return f"<Tunnel {self.local_id.hex()[:8]}>"

    # ------------------------------------------------------------------ sending

    async def send(self, value: bytes) -> None:
        """Send one message (any size), waiting for the far end's allowance.

        Cancellation: a ``send()`` cancelled before its first piece went has
        sent nothing; one cancelled in the middle of a large message leaves it
        incomplete, and the far end discards it (the tunnel stays usable: the
        next message arrives whole).

        Raises:
            TypeError: ``value`` is not bytes.
            trio.BrokenResourceError: the far end closed, failed or is unreachable.
            trio.ClosedResourceError: this end was closed.
        """
        if type(value) is not bytes:
            raise TypeError(f"a tunnel carries bytes, not {type(value).__name__}")
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._send_lock.acquire_nowait()
            waited = False
        except trio.WouldBlock:
            await self._send_lock.acquire()
            waited = True
        try:
            self._check_sendable()
            while self._allowance <= 0:
                await self._allowance_lot.park()
                waited = True
                self._check_sendable()
            size = len(value)
            offset = 0
            while True:
                piece = value[offset : offset + CHUNK_SIZE]
                waited |= await self._send_frame(offset == 0, size, piece)
                offset += len(piece)
                if offset >= size:
                    break
            self._messages_sent += 1
            self._bytes_sent += size
        finally:
            self._send_lock.release()
        if not waited and self._messages_sent % _YIELD_EVERY == 0:
            # Sends that need not wait do not yield each time, so that a burst of
            # small messages goes out in large writes; others still get their turn.
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _send_frame(self, first: bool, size: int, piece: bytes) -> bool:
        """Send one piece; returns True if it had to wait."""
        waited = False
        while True:
            self._check_sendable()
            path = self._path()
            if path is None:
                self._break("the path to the far end is gone")
                continue  # raises BrokenResourceError above
            if not path.is_open:  # being replaced by the peer's other link
                await trio.sleep(0.001)
                waited = True
                continue
            try:
                if not path.has_send_capacity:
                    await path.wait_send_capacity()
                    waited = True
                    self._check_sendable()
                path.send_nowait(
                    TunnelData(self.remote_id, self._send_sequence, size if first else None, piece)
                )
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            self._send_sequence += 1
            self._allowance -= len(piece)
            return waited

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this tunnel end was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)
        if self._far_end_closed:
            raise trio.BrokenResourceError("the far end closed the tunnel")

    def _send_control(self, make: Callable[[], Frame]) -> bool:
        path = self._path()
        if path is None:
            return False
        try:
            path.send_control_nowait(make())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    # ---------------------------------------------------------------- receiving

    def receive_nowait(self) -> bytes:
        """The next message; raises trio.WouldBlock if none has arrived whole."""
        if self._closed:
            raise trio.ClosedResourceError("this tunnel end was closed")
        if self._messages:
            message = self._messages.popleft()
            self._buffered -= len(message)
            self._messages_received += 1
            self._bytes_received += len(message)
            self._give_back(len(message))
            return message
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)
        if self._far_end_closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> bytes:
        """Wait for the next message (see the class docstring for the ends).

        Cancellation: loses nothing: the next ``receive()`` gets the message a
        cancelled one did not.

        Raises:
            trio.EndOfChannel: the far end closed cleanly and all was read.
            trio.BrokenResourceError: the far end failed or the path broke.
            trio.ClosedResourceError: this end was closed.
        """
        return await receive_parked(self.receive_nowait, self._receive_lot)

    def _give_back(self, size: int) -> None:
        self._to_return += size
        if self._to_return >= self._return_threshold:
            amount = self._to_return
            if self._send_control(lambda: TunnelAllow(self.remote_id, amount)):
                self._peer_allowance += amount
                self._to_return = 0

    # ------------------------------------------------- frames from the far end

    def frame_received(self, frame: TunnelData | TunnelClose | TunnelAllow) -> None:
        """A frame for this end (called synchronously by the node).

        Raises:
            ProtocolError: the far end broke the protocol (its link is closed).
        """
        if isinstance(frame, TunnelAllow):
            self._allowance += frame.allowance
            self._allowance_lot.unpark_all()
            return
        sequence = frame.sequence
        if sequence != self._expected:
            if sequence < self._expected or sequence in self._early:
                raise ProtocolError(f"tunnel frame {sequence} arrived twice")
            if len(self._early) >= _MAX_EARLY_FRAMES:
                raise ProtocolError("too many tunnel frames out of order")
            self._early[sequence] = frame
            return
        self._apply(frame)
        while self._expected in self._early:
            self._apply(self._early.pop(self._expected))

    def _apply(self, frame: TunnelData | TunnelClose) -> None:
        self._expected += 1
        if self._far_end_closed or self._broken is not None:
            if isinstance(frame, TunnelData) and self._far_end_closed:
                raise ProtocolError("tunnel data after its close")
            return
        if isinstance(frame, TunnelClose):
            self._discard_partial()
            if frame.reason:
                self._break(f"the far end failed: {frame.reason}")
            else:
                self._far_end_closed = True
                self._wake()
            return
        piece = frame.data
        if frame.size is not None:
            if self._peer_allowance <= 0:
                raise ProtocolError("the far end sent beyond its tunnel allowance")
            self._discard_partial()  # a new message: the sender gave the last one up
            self._partial_size = frame.size
        elif self._partial_size is None:
            raise ProtocolError("a tunnel continuation without a first piece")
        self._peer_allowance -= len(piece)
        self._partial_got += len(piece)
        if self._partial_got > self._partial_size:
            raise ProtocolError("a tunnel message longer than announced")
        if self._closed:  # nobody reads: give the room back at once
            self._give_back(len(piece))
        else:
            self._partial.append(piece)
        if self._partial_got == self._partial_size:
            message = self._partial[0] if len(self._partial) == 1 else b"".join(self._partial)
            self._partial.clear()
            self._partial_size = None
            self._partial_got = 0
            if not self._closed:
                self._messages.append(message)
                self._buffered += len(message)
                self._receive_lot.unpark()

    def _discard_partial(self) -> None:
        if self._partial_size is not None:
            discarded = self._partial_got
            self._partial.clear()
            self._partial_size = None
            self._partial_got = 0
            if not self._closed:
                self._give_back(discarded)

    def _break(self, reason: str) -> None:
        """The far end failed or the path to it broke."""
        if self._broken is None and not self._far_end_closed:
            self._broken = reason
        self._wake()

    def _wake(self) -> None:
        self._receive_lot.unpark_all()
        self._allowance_lot.unpark_all()

    # -------------------------------------------------------------------- ends

    async def aclose(self) -> None:
        """Close this end cleanly: the far end reads what was sent, then EndOfChannel.

        Cancellation: the tunnel is closed before the checkpoint: a cancelled
        ``aclose()`` has closed it (cleanly).
        """
        self._close("")
        await trio.lowlevel.checkpoint()

    def abort(self, reason: str) -> None:
        """Close this end abnormally: the far end gets BrokenResourceError(reason)."""
        self._close(reason or "aborted")

    def _close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._broken is None:
            sequence = self._send_sequence
            if self._send_control(lambda: TunnelClose(self.remote_id, sequence, reason)):
                self._send_sequence += 1
        self._messages.clear()
        self._buffered = 0
        self._wake()
        self._on_close(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_value is None:
            await self.aclose()
        else:
            self.abort(type(exc_value).__name__)

    def statistics(self) -> TunnelStatistics:
        """Messages and bytes sent and received, buffered bytes, allowance left."""
        return TunnelStatistics(
            self._messages_sent,
            self._bytes_sent,
            self._messages_received,
            self._bytes_received,
            self._buffered + self._partial_got,
            self._allowance,
        )


class IncomingTunnels(BoundedQueue[Tunnel]):
    """Tunnels opened to this member, oldest first (see :meth:`Node.tunnels`);
    beyond ``limit`` waiting, more are refused.

    A trio ``ReceiveChannel`` of :class:`Tunnel`; each received tunnel belongs
    to its receiver. Example::

        async with node.tunnels("echo") as incoming:
            async for tunnel in incoming:
                async with tunnel:
                    async for message in tunnel:
                        await tunnel.send(message)
    """

    def __init__(self, limit: int, on_close: Callable[[IncomingTunnels], None]) -> None:
        super().__init__(limit, Overflow.REFUSE, closed_message="no longer taking tunnels")
        self.limit = limit
        self._on_close = on_close

    def _push(self, tunnel: Tunnel) -> None:
        if self.closed or not self.push(tunnel):
            tunnel.abort("the member stopped taking tunnels")

    async def aclose(self) -> None:
        """Stop taking tunnels; those not yet received are closed abnormally.

        Cancellation: it has stopped (and closed those tunnels) before its
        checkpoint: a cancelled ``aclose()`` has closed the receiver.
        """
        if self.close_nowait():
            for tunnel in self.take_all():
                tunnel.abort("the member stopped taking tunnels")
            self._on_close(self)
        await trio.lowlevel.checkpoint()

"""One tunnel between a relay client and the overlay.

The client side speaks chunks and byte allowances (see :mod:`.chunks`); the
overlay side is a :class:`~iris_trio.patterns.tunnel.Tunnel`. Two tasks move
messages: *up* (client -> overlay: reassembled messages are sent on the tunnel,
then their bytes are given back to the client) and *down* (overlay -> client:
a message starts only while the client has allowance, then goes whole).
"""

from __future__ import annotations

import collections

import trio

from ..patterns.tunnel import Tunnel
from .chunks import CHUNK_LIMIT, ChunkAssembler, split
from .codec import TunnelAllow, TunnelClosed, TunnelTransfer
from .writer import PacketWriter

__all__ = ["TunnelBridge"]


class TunnelBridge:
    """Relays one tunnel, named ``client_id`` on the client's connection.

    Args:
        client_id: the client's id of the tunnel.
        tunnel: the overlay end.
        writer: the connection's packet writer.
        window: bytes granted to the client (buffered here at most, plus one message).
        max_message: the largest message the client may send.
    """

    def __init__(
        self,
        client_id: int,
        tunnel: Tunnel,
        writer: PacketWriter,
        *,
        window: int,
        max_message: int,
    ) -> None:
        self.client_id = client_id
        self.tunnel = tunnel
        self._writer = writer
        self._window = window
        self._assembler = ChunkAssembler(window, max_message=max_message)
        self._uplink: collections.deque[tuple[bytes, int]] = collections.deque()  # owed
        self._uplink_lot = trio.lowlevel.ParkingLot()
        self._client_allowance = 0
        self._allowance_lot = trio.lowlevel.ParkingLot()
        self._close_requested = False
        self._closed_sent = False

    # ------------------------------------------------- from the client (reader)

    def allow(self, size: int) -> None:
        """The client can take ``size`` more bytes."""
        self._client_allowance += size
        self._allowance_lot.unpark_all()

    def transfer(self, size: int, chunk: bytes) -> None:
        """A chunk from the client.

        The chunks of an incomplete message are given back as they arrive (the
        message is held here, bounded by the largest message, not by the window:
        a message larger than the window must get through); the last chunk is
        given back once the whole message was sent on. An abandoned incomplete
        message was thus given back already.

        Raises:
            RelayProtocolError: see :meth:`ChunkAssembler.chunk`.
        """
        message, _ = self._assembler.chunk(size, chunk)
        if message is None:
            self._give_back(len(chunk))
        else:
            self._uplink.append((message, len(chunk)))
            self._uplink_lot.unpark()

    def _give_back(self, size: int) -> None:
        if size:
            self._assembler.grant(size)
            self._writer.send_nowait(TunnelAllow(self.client_id, size))

    def close(self) -> None:
        """The client closed its end: send what it sent, then close cleanly."""
        self._close_requested = True
        self._uplink_lot.unpark()

    # -------------------------------------------------------------- the tasks

    async def run(self) -> None:
        """Relay until either end closes; the client hears TUN_CLOSE once."""
        self._writer.send_nowait(TunnelAllow(self.client_id, self._window))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._down, nursery.cancel_scope)
            nursery.start_soon(self._up, nursery.cancel_scope)

    def _closed(self, reason: str) -> None:
        if not self._closed_sent:
            self._closed_sent = True
            self._writer.send_nowait(TunnelClosed(self.client_id, reason))

    async def _down(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                message = await self.tunnel.receive()
                while self._client_allowance <= 0:
                    await self._allowance_lot.park()
                for size, piece in split(message, CHUNK_LIMIT):
                    self._client_allowance -= len(piece)
                    await self._writer.send(TunnelTransfer(self.client_id, size, piece))
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._closed("")
        except trio.BrokenResourceError as exc:
            self._closed(str(exc) or "the tunnel broke")
        scope.cancel()

    async def _up(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                while not self._uplink and not self._close_requested:
                    await self._uplink_lot.park()
                if not self._uplink:
                    await self.tunnel.aclose()  # _down reports the close
                    return
                message, owed = self._uplink.popleft()
                await self.tunnel.send(message)
                self._give_back(owed)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed(str(exc) or "the tunnel broke")
            scope.cancel()

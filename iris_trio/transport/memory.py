"""Links over trio's in-memory streams: many nodes in one trio run, no sockets.

A :class:`MemoryNetwork` is an address book. A node serving on it gets an
address "<name>:<port>" (e.g. "memory:3"); dialling that address creates a
:func:`trio.testing.memory_stream_pair`, hands one end to the listener's
handshake (in a task of the listener's own nursery, so each connection's task
tree stays inside the node that accepted it) and runs the secure link on the
other. The handshake, its limits and the links are exactly those of TCP; only
the bytes travel through memory, and nothing reads a real clock, so a whole
overlay runs under :class:`trio.testing.MockClock` (``autojump_clock``).

The streams buffer without bound, like a socket whose buffers never fill:
nothing here paces a sender (the link's own send queue and the patterns' flow
control still do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from .base import split_host_port
from .config import LinkConfig
from .link import FrameHandler, Link, open_link
from .listener import LinkHandler, LinkListener

__all__ = ["MemoryNetwork"]

_MemoryStream = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]
#: The two ends of one connection: the dialler's, the listener's.
_Connection = tuple[_MemoryStream, _MemoryStream]


@dataclasses.dataclass(slots=True)
class _Listening:
    listener: LinkListener
    nursery: trio.Nursery


class MemoryNetwork:
    """An in-memory network: a :class:`~iris_trio.transport.base.Transport` for tests.

    Give the same instance to every node that should reach the others::

        memory = MemoryNetwork()
        async with trio.open_nursery() as nursery:
            first = await nursery.start(
                functools.partial(serve_node, transport=memory, discovery="off")
            )
            second = await nursery.start(
                functools.partial(
                    serve_node, transport=memory, discovery="off", seeds=[first.address]
                )
            )

    (:func:`iris_trio.testing.open_cluster` does this for n nodes.) Discovery
    must be off: beacons are UDP; nodes find each other through seeds.

    Connecting to an address nobody serves raises :class:`ConnectionRefusedError`
    at once; a node's address leaves the book when its listener stops (the node
    left). :meth:`kill` cuts a node off as a crash of its host would.

    Args:
        name: the host part of every address on this network.
    """

    def __init__(self, name: str = "memory") -> None:
        if not name or ":" in name or "[" in name:
            raise ValueError(f"a memory network's name must be a plain host name, not {name!r}")
        self.name = name
        self._listening: dict[str, _Listening] = {}
        #: Each node's open connections, by its listen address.
        self._connections: dict[str, set[_Connection]] = {}
        self._killed: set[str] = set()
        self._next_port = 1
        # Bytes per second into each throttled node, and the send streams of
        # the connections towards each node (to throttle those open already).
        self._rates: dict[str, float] = {}
        self._towards: dict[str, set[trio.testing.MemorySendStream]] = {}
        self._receiver: weakref.WeakKeyDictionary[
            trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<MemoryNetwork {self.name!r}: {len(self._listening)} listening>"

    @property
    def addresses(self) -> list[str]:
        """The addresses served now (killed ones included), oldest first."""
        return list(self._listening)

    # ------------------------------------------------------------- Transport

    async def serve(
        self,
        handler: LinkHandler,
        *,
        identity: NodeIdentity,
        network: Network,
        host: str,
        port: int,
        config: LinkConfig | None = None,
        on_frame: FrameHandler | None = None,
        task_status: trio.TaskStatus[LinkListener] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept links until cancelled (see ``Transport.serve``).

        ``host`` is ignored: every address here is "<name>:<port>". Port 0 takes
        the next free port.

        Raises:
            OSError: ``port`` is already served on this network (EADDRINUSE).
        """
        del host  # one host: the network's name
        address = self._bind(port)
        listener = LinkListener(
            handler,
            identity=identity,
            network=network,
            config=config,
            listen=address,
            on_frame=on_frame,
        )
        async with trio.open_nursery() as nursery:
            entry = _Listening(listener, nursery)
            self._listening[address] = entry
            try:
                task_status.started(listener)
                await trio.sleep_forever()
            finally:
                # Out of the book before the nursery winds down: nobody may
                # connect to a node that is leaving.
                del self._listening[address]
                self._killed.discard(address)

    @asynccontextmanager
    async def connect(
        self,
        address: str,
        *,
        identity: NodeIdentity,
        network: Network,
        config: LinkConfig | None = None,
        listen: str = "",
        on_frame: FrameHandler | None = None,
    ) -> AsyncIterator[Link]:
        """Dial ``address`` on this network and run the link for the body.

        A checkpoint, even when it fails at once.

        Raises:
            ConnectionRefusedError: nothing serves ``address`` (or it was killed).
            OSError: the dialling node (``listen``) was killed (ENETUNREACH).
            HandshakeError: the handshake failed (another network key or name).
            ValueError: ``address`` is not "host:port".
        """
        await trio.lowlevel.checkpoint()
        split_host_port(address)
        if listen in self._killed:
            raise OSError(errno.ENETUNREACH, f"{listen} was killed: it reaches nobody")
        entry = self._listening.get(address)
        if entry is None or address in self._killed:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"nothing serves {address} on memory network {self.name!r}"
            )
        ours, theirs = trio.testing.memory_stream_pair()
        connection = (ours, theirs)
        self._track(connection, listen, address)
        self._aim(ours.send_stream, theirs.receive_stream, address)
        if listen:
            self._aim(theirs.send_stream, ours.receive_stream, listen)
        entry.nursery.start_soon(self._accept, entry.listener, connection, listen, address)
        try:
            async with open_link(
                ours,
                initiator=True,
                identity=identity,
                network=network,
                config=config,
                listen=listen,
                on_frame=on_frame,
            ) as link:
                yield link
        finally:
            self._untrack(connection, listen, address)
            self._towards.get(address, set()).discard(ours.send_stream)
            self._towards.get(listen, set()).discard(theirs.send_stream)

    # ---------------------------------------------------------------- faults

    def kill(self, address: str) -> None:
        """Cut the node serving at ``address`` off, as a crash of its host would.

        Every connection of that node breaks in the middle (both ends see a
        broken link, never a clean end), connecting to it is refused, and its
        own dials fail, until :meth:`revive`. The node's tasks keep running:
        cancel its scope to stop it. Not a checkpoint.

        Raises:
            KeyError: nothing serves ``address`` on this network.
        """
        if address not in self._listening:
            raise KeyError(f"nothing serves {address} on memory network {self.name!r}")
        self._killed.add(address)
        for connection in list(self._connections.get(address, ())):
            _cut(connection)

    def throttle(self, address: str, bytes_per_second: float) -> None:
        """Let bytes into the node at ``address`` at most at this rate, on each
        of its connections (as a slow network path to its host would): its
        peers' writes to it take their time, so their send queues fill. Applies
        to open connections and later ones. Not a checkpoint."""
        if not bytes_per_second > 0:
            raise ValueError("bytes_per_second must be positive")
        self._rates[address] = bytes_per_second
        for send_stream in self._towards.get(address, ()):
            receive_stream = self._receiver[send_stream]
            send_stream.send_all_hook = _throttled(send_stream, receive_stream, bytes_per_second)
            send_stream.close_hook = _closing(send_stream, receive_stream)

    def _aim(
        self,
        send_stream: trio.testing.MemorySendStream,
        receive_stream: trio.testing.MemoryReceiveStream,
        address: str,
    ) -> None:
        self._towards.setdefault(address, set()).add(send_stream)
        self._receiver[send_stream] = receive_stream
        rate = self._rates.get(address)
        if rate is not None:
            send_stream.send_all_hook = _throttled(send_stream, receive_stream, rate)
            send_stream.close_hook = _closing(send_stream, receive_stream)

    def revive(self, address: str) -> None:
        """Let a killed node at ``address`` connect and be connected to again."""
        self._killed.discard(address)

    # -------------------------------------------------------------- internal

    def _bind(self, port: int) -> str:
        if port == 0:
            while f"{self.name}:{self._next_port}" in self._listening:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        address = f"{self.name}:{port}"
        if address in self._listening:
            raise OSError(errno.EADDRINUSE, f"{address} is already served")
        return address

    def _track(self, connection: _Connection, *addresses: str) -> None:
        for address in addresses:
            if address:
                self._connections.setdefault(address, set()).add(connection)

    def _untrack(self, connection: _Connection, *addresses: str) -> None:
        for address in addresses:
            connections = self._connections.get(address)
            if connections is not None:
                connections.discard(connection)
                if not connections:
                    del self._connections[address]

    async def _accept(
        self, listener: LinkListener, connection: _Connection, source: str, address: str
    ) -> None:
        try:
            await listener.handle_stream(connection[1], source=source or None)
        finally:
            self._untrack(connection, source, address)


#: Bytes a throttled connection delivers at a time.
_THROTTLE_PIECE = 16 * 1024


def _throttled(
    send_stream: trio.testing.MemorySendStream,
    receive_stream: trio.testing.MemoryReceiveStream,
    rate: float,
) -> Callable[[], Awaitable[None]]:
    """A send hook that delivers what was written after the time it takes at ``rate``."""

    async def deliver() -> None:
        # In pieces, as a network path trickles: the receiver sees data arrive
        # all along, not one burst after the whole write's time.
        while True:
            try:
                data = send_stream.get_data_nowait(_THROTTLE_PIECE)
            except trio.WouldBlock:
                return
            if data:
                await trio.sleep(len(data) / rate)
            try:
                if data:
                    receive_stream.put_data(data)
                else:
                    receive_stream.put_eof()
                    return
            except trio.ClosedResourceError:
                raise trio.BrokenResourceError("the receiving end was closed") from None

    return deliver


def _closing(
    send_stream: trio.testing.MemorySendStream,
    receive_stream: trio.testing.MemoryReceiveStream,
) -> Callable[[], None]:
    """A close hook for a throttled stream: what is still on the way arrives at
    once (the time no longer matters), unless the receiver has gone."""

    def close() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            trio.testing.memory_stream_pump(send_stream, receive_stream)
            trio.testing.memory_stream_pump(send_stream, receive_stream)  # the EOF

    return close


async def _reset() -> None:
    raise trio.BrokenResourceError("the connection was reset (its node was killed)")


def _cut(connection: _Connection) -> None:
    """Break ``connection`` in the middle, as a crashed host or a cut cable would.

    Both ends read what was already delivered, then an end of stream without
    the secure stream's end record (a truncated, broken link, never a clean
    end); their writes fail from now on.
    """
    for end in connection:
        end.send_stream.send_all_hook = _reset
        end.send_stream.wait_send_all_might_not_block_hook = _reset
        end.send_stream.close_hook = None  # nothing more travels, not even the EOF
        end.receive_stream.put_eof()

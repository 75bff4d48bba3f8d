"""Accepting links: bounded concurrent handshakes, per node and per source address.

An accepted connection first needs a handshake slot: at most
``max_handshakes`` handshakes run at once, and at most
``max_handshakes_per_source`` from one source address. A connection that finds
no slot is closed at once (and counted) instead of queueing, so a flood of
silent connections cannot starve real peers; every handshake is cut at the
handshake deadline, which frees its slot. A failed handshake is logged as a
WARNING naming the likely cause, at most once every 30 s per source address.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from ..errors import HandshakeError
from ..wire.frames import FrameCodec, Hello
from .config import LinkConfig
from .handshake import log_handshake_failure, perform_handshake
from .link import SOFTWARE, FrameHandler, Link, established_link

__all__ = ["LinkHandler", "LinkListener", "ListenerStatistics", "serve_tcp_links"]

log = logging.getLogger("iris_trio.transport")

#: Awaited with each established link; the link closes when it returns.
LinkHandler = Callable[[Link], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """Counters of a link listener."""

    accepted: int
    rejected_busy: int
    handshakes_failed: int
    handshakes_completed: int
    handshakes_in_progress: int


class LinkListener:
    """Serves incoming connections as links (the policy; transports feed it streams).

    Args:
        handler: awaited with each established link; the link closes when it returns.
        identity: this node's key pair.
        network: the network peers must belong to.
        config: link limits.
        listen: the address told to peers in the hello.
        on_frame: push-mode consumer for every accepted link (else pull mode).
        max_handshakes: concurrent handshakes in total.
        max_handshakes_per_source: concurrent handshakes from one address.
    """

    def __init__(
        self,
        handler: LinkHandler,
        *,
        identity: NodeIdentity,
        network: Network,
        config: LinkConfig | None = None,
        listen: str = "",
        on_frame: FrameHandler | None = None,
        max_handshakes: int = 64,
        max_handshakes_per_source: int = 8,
    ) -> None:
        self._handler = handler
        self._on_frame = on_frame
        self._identity = identity
        self._network = network
        self.config = config or LinkConfig()
        self.listen = listen
        self._codec = FrameCodec(self.config.max_frame_size)
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_source = max_handshakes_per_source
        self._in_progress = 0
        self._per_source: collections.Counter[str] = collections.Counter()
        self._accepted = 0
        self._rejected_busy = 0
        self._failed = 0
        self._completed = 0

    def statistics(self) -> ListenerStatistics:
        """A snapshot of the listener's counters."""
        return ListenerStatistics(
            accepted=self._accepted,
            rejected_busy=self._rejected_busy,
            handshakes_failed=self._failed,
            handshakes_completed=self._completed,
            handshakes_in_progress=self._in_progress,
        )

    def _admit(self, source: str | None) -> bool:
        if self._in_progress >= self.max_handshakes:
            return False
        if source is not None and self._per_source[source] >= self.max_handshakes_per_source:
            return False
        self._in_progress += 1
        if source is not None:
            self._per_source[source] += 1
        return True

    def _release(self, source: str | None) -> None:
        self._in_progress -= 1
        if source is not None:
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]

    async def handle_stream(self, stream: trio.abc.Stream, *, source: str | None = None) -> None:
        """Handshake on an accepted ``stream`` and run the handler with the link.

        Args:
            stream: a connection a transport accepted; this call owns and closes it.
            source: who connects, for the per-source handshake limit (default:
                the socket's peer host; none for a stream without a socket).
        """
        self._accepted += 1
        if source is None:
            source = _source_host(stream)
        if not self._admit(source):
            self._rejected_busy += 1
            await trio.aclose_forcefully(stream)
            return
        try:
            hello = Hello(
                software=SOFTWARE, listen=self.listen, max_frame_size=self.config.max_frame_size
            )
            handshake = await perform_handshake(
                stream,
                initiator=False,
                identity=self._identity,
                network=self._network,
                hello=hello,
                timeout=self.config.handshake_timeout,
                codec=self._codec,
            )
        except HandshakeError as exc:
            self._failed += 1
            log_handshake_failure(stream, exc, initiator=False)
            await trio.aclose_forcefully(stream)
            return
        finally:
            self._release(source)
        self._completed += 1
        async with established_link(
            stream, handshake, config=self.config, codec=self._codec, on_frame=self._on_frame
        ) as link:
            await self._handler(link)

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[Sequence[trio.abc.Listener[trio.abc.Stream]]] = (
            trio.TASK_STATUS_IGNORED
        ),
    ) -> None:
        """Accept connections on ``listeners`` forever (cancel to stop)."""
        await trio.serve_listeners(self.handle_stream, list(listeners), task_status=task_status)


def _source_host(stream: trio.abc.Stream) -> str | None:
    socket = getattr(stream, "socket", None)
    if socket is None:
        return None
    try:
        return str(socket.getpeername()[0])
    except OSError:
        return None


async def serve_tcp_links(
    handler: LinkHandler,
    port: int,
    *,
    identity: NodeIdentity,
    network: Network,
    host: str = "127.0.0.1",
    config: LinkConfig | None = None,
    on_frame: FrameHandler | None = None,
    max_handshakes: int = 64,
    max_handshakes_per_source: int = 8,
    task_status: trio.TaskStatus[LinkListener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen for links on TCP ``host:port`` (port 0 picks a free port).

    Reports the :class:`LinkListener` through ``task_status``; its ``listen``
    attribute holds the bound "host:port".
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    listener = LinkListener(
        handler,
        identity=identity,
        network=network,
        config=config,
        listen=f"{bound[0]}:{bound[1]}" if ":" not in bound[0] else f"[{bound[0]}]:{bound[1]}",
        on_frame=on_frame,
        max_handshakes=max_handshakes,
        max_handshakes_per_source=max_handshakes_per_source,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.serve, listeners)
        task_status.started(listener)

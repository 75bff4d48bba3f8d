"""Accepting links: bounded concurrent handshakes that a flood cannot fill.

An accepted connection first needs a handshake slot: at most
``max_handshakes`` handshakes run at once, at most ``max_handshakes_per_prefix``
from one address prefix (an IPv4 /24, an IPv6 /64) and at most
``max_handshakes_per_source`` from one address. When a group is full the
newcomer takes the slot of that group's *oldest unproven* handshake: one whose
peer has not yet sent a first message that authenticates with the network key.
Silent connections (a port scan, a flood from any number of addresses) are
evicted that way, while every peer that holds the key proves it with its very
first message, within a round trip, and then keeps its slot; a newcomer finds
no slot (and is closed at once) only when every handshake of its group is
proven. Every handshake is still cut at the handshake deadline. A failed
handshake is logged as a WARNING naming the likely cause, at most once every
30 s per source address.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from .._logs import LogLimiter
from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from ..errors import HandshakeError
from ..wire.frames import FrameCodec, Hello
from .config import LinkConfig
from .handshake import log_handshake_failure, perform_handshake
from .link import SOFTWARE, FrameHandler, Link, established_link

__all__ = [
    "LinkHandler",
    "LinkListener",
    "ListenerStatistics",
    "address_prefix",
    "serve_tcp_links",
]

log = logging.getLogger("iris_trio.transport")
_log_limiter = LogLimiter()

#: Awaited with each established link; the link closes when it returns.
LinkHandler = Callable[[Link], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """Counters of a link listener.

    Attributes:
        accepted: connections accepted.
        rejected_busy: connections closed at once: every handshake slot of
            their group was held by a peer that proved the network key.
        evicted: unproven handshakes closed to make room for a newcomer.
        handshakes_failed / handshakes_completed: handshakes that ended so.
        handshakes_in_progress: handshakes running now.
    """

    accepted: int
    rejected_busy: int
    handshakes_failed: int
    handshakes_completed: int
    handshakes_in_progress: int
    evicted: int = 0


def address_prefix(host: str) -> str:
    """The group of a source address for the per-prefix handshake limit: the
    IPv4 /24 or IPv6 /64 network it is in ("10.1.2.0/24"); an IPv4-mapped IPv6
    address counts as IPv4; anything else (a memory transport's name) is its own group."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    bits = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


@dataclasses.dataclass(eq=False, slots=True)
class _Slot:
    """One handshake in progress."""

    source: str | None
    prefix: str | None
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    #: The peer's first message authenticated: it holds the network key.
    proven: bool = False


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
        max_handshakes_per_prefix: concurrent handshakes from one IPv4 /24 or
            IPv6 /64 (see :func:`address_prefix`).
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
        max_handshakes_per_prefix: int = 32,
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
        self.max_handshakes_per_prefix = max_handshakes_per_prefix
        # Handshakes in progress, oldest first (a dict as an ordered set).
        self._slots: dict[_Slot, None] = {}
        self._per_source: collections.Counter[str] = collections.Counter()
        self._per_prefix: collections.Counter[str] = collections.Counter()
        self._evicted = 0
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
            handshakes_in_progress=len(self._slots),
            evicted=self._evicted,
        )

    def _admit(self, source: str | None) -> _Slot | None:
        """A slot for a newcomer from ``source``, evicting the oldest unproven
        handshake of each full group it belongs to; None if a group is full of
        proven handshakes."""
        prefix = address_prefix(source) if source is not None else None
        # The narrowest group first: evicting there also makes room in the wider ones.
        groups: list[tuple[int, str | None, str | None]] = []
        if source is not None and prefix is not None:
            groups.append((self.max_handshakes_per_source, source, None))
            groups.append((self.max_handshakes_per_prefix, None, prefix))
        groups.append((self.max_handshakes, None, None))
        for limit, by_source, by_prefix in groups:
            while self._count(by_source, by_prefix) >= limit:
                if not self._evict_oldest(by_source, by_prefix):
                    return None
        slot = _Slot(source, prefix)
        self._slots[slot] = None
        if source is not None and prefix is not None:
            self._per_source[source] += 1
            self._per_prefix[prefix] += 1
        return slot

    def _count(self, source: str | None, prefix: str | None) -> int:
        if source is not None:
            return self._per_source[source]
        if prefix is not None:
            return self._per_prefix[prefix]
        return len(self._slots)

    def _evict_oldest(self, source: str | None, prefix: str | None) -> bool:
        for slot in self._slots:
            if slot.proven or (source is not None and slot.source != source):
                continue
            if prefix is not None and slot.prefix != prefix:
                continue
            self._release(slot)
            slot.scope.cancel()
            self._evicted += 1
            _log_limiter.log(
                log,
                logging.WARNING,
                "evicting",
                "handshake slots are full: closing the oldest connections that sent no"
                " valid handshake (a flood of silent connections?)",
            )
            return True
        return False

    def _release(self, slot: _Slot) -> None:
        if slot not in self._slots:
            return  # released already (evicted)
        del self._slots[slot]
        if slot.source is not None and slot.prefix is not None:
            for counter, key in ((self._per_source, slot.source), (self._per_prefix, slot.prefix)):
                counter[key] -= 1
                if not counter[key]:
                    del counter[key]

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
        slot = self._admit(source)
        if slot is None:
            self._rejected_busy += 1
            await trio.aclose_forcefully(stream)
            return

        def proven() -> None:
            slot.proven = True

        handshake = None
        try:
            hello = Hello(
                software=SOFTWARE, listen=self.listen, max_frame_size=self.config.max_frame_size
            )
            with slot.scope:  # cancelled when evicted
                handshake = await perform_handshake(
                    stream,
                    initiator=False,
                    identity=self._identity,
                    network=self._network,
                    hello=hello,
                    timeout=self.config.handshake_timeout,
                    codec=self._codec,
                    on_proven=proven,
                )
        except HandshakeError as exc:
            self._failed += 1
            log_handshake_failure(stream, exc, initiator=False)
            await trio.aclose_forcefully(stream)
            return
        finally:
            self._release(slot)
        if handshake is None:  # evicted
            await trio.aclose_forcefully(stream)
            return
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
    max_handshakes_per_prefix: int = 32,
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
        max_handshakes_per_prefix=max_handshakes_per_prefix,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.serve, listeners)
        task_status.started(listener)

"""What the overlay asks of a transport: accept links and dial them.

A transport only decides how two nodes get a byte stream between them (TCP
sockets, or :class:`~iris_trio.transport.memory.MemoryNetwork` in tests). The
secure handshake, its limits and the :class:`~iris_trio.transport.link.Link`
on top are the same for every transport: a transport hands accepted streams to
:meth:`LinkListener.handle_stream <iris_trio.transport.listener.LinkListener.handle_stream>`
and runs :func:`~iris_trio.transport.link.open_link` on the streams it dials.
"""

from __future__ import annotations

import ipaddress
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from ..crypto.identity import NodeIdentity
from ..crypto.keys import Network
from .config import LinkConfig
from .link import FrameHandler, Link
from .listener import LinkHandler, LinkListener

__all__ = ["Transport", "is_loopback", "split_host_port"]


class Transport(Protocol):
    """How links are made: where a node accepts them and how it dials a peer.

    Addresses are "host:port" strings; what they mean is the transport's own
    business (a TCP endpoint, an entry in a memory network's address book).

    A node takes one as ``transport=`` (:func:`iris_trio.join`,
    :func:`iris_trio.serve_node`); the default is TCP, and
    :class:`iris_trio.testing.MemoryNetwork` is the one for tests. The node
    calls its methods; an application only passes it along. Example::

        memory = iris_trio.testing.MemoryNetwork()
        async with (
            iris_trio.join("calc", transport=memory, discovery="off") as first,
            iris_trio.join(transport=memory, discovery="off", seeds=[first.address]) as second,
        ):
            ...
    """

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
        """Accept links at ``host:port`` until cancelled (port 0: any free port).

        Each accepted connection runs the listener's handshake (with its limits)
        and then ``handler`` with the link, in a task of this call's own nursery.
        Reports the :class:`~iris_trio.transport.listener.LinkListener` through
        ``task_status`` once peers can
        connect; its ``listen`` attribute is the address to give them.

        Cancellation: it stops accepting and its address is free again; the
        links it accepted (their tasks run in its nursery) are closed.

        Raises:
            OSError: the address cannot be listened on.
        """
        ...

    def connect(
        self,
        address: str,
        *,
        identity: NodeIdentity,
        network: Network,
        config: LinkConfig | None = None,
        listen: str = "",
        on_frame: FrameHandler | None = None,
    ) -> AbstractAsyncContextManager[Link]:
        """Dial ``address``, handshake, and run the link for the ``async with`` body.

        ``listen`` is the dialling node's own listen address (told to the peer).

        Cancellation: cancelled while dialling or in the handshake, nothing is
        left open; leaving the body in any way closes the link.

        Raises:
            OSError: the connection could not be made (refused, unreachable).
            HandshakeError: the handshake failed or timed out.
            ValueError: ``address`` is not "host:port".
        """
        ...


def split_host_port(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6 host]:port".

    Raises:
        ValueError: the port is not a number.
    """
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True if ``host`` is a loopback address (127.0.0.0/8, ::1) or "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

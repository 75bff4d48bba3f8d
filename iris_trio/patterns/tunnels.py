"""Tunnels: an ordered, flow-controlled channel between a caller and one member.

Opening a tunnel is a call with the request pattern's rules (deadline, retry,
"no responders"), anycast to a member that takes tunnels; the member dials the
caller (or uses the link it has) and sends ``TunnelInit``; from then on the two
ends exchange tunnel frames directly over that link (see :mod:`.tunnel` for the
channel itself and its flow control).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from ..errors import ProtocolError
from ..overlay.port import OverlayPort
from ..overlay.trees import AnycastDelivery
from ..transport.link import Link
from ..wire.frames import Frame
from .membership import TUNNEL, Membership, wait_in_tree
from .requester import PendingCall, Requester
from .requests import (
    OVERLOADED,
    REMOTE_ERROR,
    REPLY,
    RETRY,
    answer_to,
    decode_body,
    encode_failure,
)
from .tunnel import IncomingTunnels, Tunnel, TunnelPath
from .tunnel_frames import TunnelAllow, TunnelClose, TunnelData, TunnelInit

__all__ = ["DEFAULT_TUNNEL_BACKLOG", "TUNNEL_FRAMES", "Tunnels"]

#: Tunnels a member queues (opened, not yet received) before refusing more.
DEFAULT_TUNNEL_BACKLOG: Final = 1024
#: The frames of this pattern (they travel on links, outside the overlay).
TUNNEL_FRAMES: Final = (TunnelData, TunnelAllow, TunnelClose, TunnelInit)

#: Starts a task of the node's (an unexpected failure in it stops the node).
Spawn = Callable[..., None]


class Tunnels:
    """The tunnel pattern of one node (see the module docstring).

    Args:
        port: the overlay.
        requester: whose call rules open tunnels.
        membership: the clusters this node is a member of.
        spawn: starts a task in the node's nursery.
    """

    def __init__(
        self, port: OverlayPort, requester: Requester, membership: Membership, spawn: Spawn
    ) -> None:
        self._port = port
        self._requester = requester
        self._membership = membership
        self._spawn = spawn
        self._tunnels: dict[bytes, Tunnel] = {}  # by the local end's id
        self._inboxes: dict[int, list[tuple[IncomingTunnels, int]]] = {}
        self._local_path = _LocalPath(self)
        self.opened = self.accepted = 0
        self._bytes_sent = self._bytes_received = 0

    # ----------------------------------------------------------------- opening

    @asynccontextmanager
    async def tunnel(
        self, cluster: str, timeout: float | None, window: int
    ) -> AsyncIterator[Tunnel]:
        """Open a tunnel to one member of ``cluster`` (see Node.tunnel)."""
        call = PendingCall(TUNNEL, window)
        try:
            await self._requester.call(cluster, b"", timeout, call)
        except BaseException:
            if isinstance(call.result, Tunnel):  # taken just as we gave up
                call.result.abort("the requester gave up")
            raise
        assert isinstance(call.result, Tunnel)
        async with call.result as tunnel:
            yield tunnel

    def _taken(self, peer: int, frame: TunnelInit, link: Link | None) -> None:
        """A member took a tunnel we asked for (its TunnelInit)."""
        call = self._requester.pending(frame.tunnel)
        if call is None or call.kind != TUNNEL or call.settled:
            path = self._path_to(peer, link)()
            if path is not None:  # tell the member at once rather than leave it waiting
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    path.send_control_nowait(
                        TunnelClose(frame.member_tunnel, 0, "the requester gave up")
                    )
            return
        tunnel = self._new_tunnel(
            frame.tunnel, frame.member_tunnel, peer, frame.allowance, call.window, link
        )
        tunnel._send_control(lambda: TunnelAllow(frame.member_tunnel, call.window))
        call.result = tunnel
        call.settle(REPLY)
        self.opened += 1

    # ------------------------------------------------------------ member side

    @asynccontextmanager
    async def tunnels(
        self, cluster: str, window: int, backlog: int
    ) -> AsyncIterator[IncomingTunnels]:
        """Receive the tunnels opened to ``cluster`` (see Node.tunnels)."""
        async with self._membership.member(cluster) as tree:
            inbox = IncomingTunnels(backlog, self._stopped)
            self._inboxes.setdefault(tree, []).append((inbox, window))
            self._membership.takes(tree, TUNNEL, True)
            try:
                await wait_in_tree(self._port, tree, TUNNEL)
                yield inbox
            finally:
                await inbox.aclose()

    def _stopped(self, inbox: IncomingTunnels) -> None:
        for tree, entries in list(self._inboxes.items()):
            entries[:] = [entry for entry in entries if entry[0] is not inbox]
            if not entries:
                del self._inboxes[tree]
                self._membership.takes(tree, TUNNEL, False)

    def request_received(self, delivery: AnycastDelivery) -> None:
        """A tunnel opening for this node's members."""
        body = decode_body(delivery)
        entries = self._inboxes.get(delivery.tree)
        entry = min(entries, key=lambda e: len(e[0])) if entries else None
        if entry is None:
            answer_to(self._port, delivery, RETRY, b"the member takes no tunnels")
        elif entry[0].would_refuse():
            answer_to(self._port, delivery, OVERLOADED, b"too many tunnels waiting")
        else:
            deadline = trio.current_time() + body.timeout_ms / 1000
            self._spawn(self._open_member_end, entry, delivery, deadline)

    async def _open_member_end(
        self, entry: tuple[IncomingTunnels, int], delivery: AnycastDelivery, deadline: float
    ) -> None:
        inbox, window = entry
        requester, request_id = delivery.origin, delivery.tag
        link: Link | None = None
        with trio.move_on_at(deadline):
            try:
                if requester != self._port.id:
                    link = await self._port.connect_peer(requester, delivery.address)
            except OSError as exc:
                message = f"the member cannot reach the requester: {exc}"
                answer_to(self._port, delivery, REMOTE_ERROR, encode_failure(message))
                return
            tunnel = self._new_tunnel(os.urandom(16), request_id, requester, 0, window, link)
            if tunnel._send_control(lambda: TunnelInit(request_id, tunnel.local_id, window)):
                self.accepted += 1
                inbox._push(tunnel)
            else:
                tunnel.abort("the link to the requester broke")

    # ---------------------------------------------------------------- tunnels

    def _new_tunnel(
        self,
        local_id: bytes,
        remote_id: bytes,
        peer: int,
        allowance: int,
        window: int,
        fallback: Link | None,
    ) -> Tunnel:
        tunnel = Tunnel(
            local_id,
            remote_id,
            peer,
            path=self._path_to(peer, fallback),
            allowance=allowance,
            window=window,
            on_close=self._closed,
        )
        self._tunnels[local_id] = tunnel
        self._port.hold(peer)
        return tunnel

    def _closed(self, tunnel: Tunnel) -> None:
        if self._tunnels.pop(tunnel.local_id, None) is not None:
            self._port.release(tunnel.peer)
            figures = tunnel.statistics()
            self._bytes_sent += figures.bytes_sent
            self._bytes_received += figures.bytes_received

    def _path_to(self, peer: int, fallback: Link | None) -> Callable[[], TunnelPath | None]:
        if peer == self._port.id:
            return lambda: self._local_path

        def path() -> TunnelPath | None:
            link = self._port.peer_link(peer)
            if link is None and fallback is not None and fallback.is_open:
                return fallback  # the link the tunnel was set up on, not yet adopted
            return link

        return path

    def frame_received(self, link: Link, frame: Frame) -> None:
        """A tunnel frame arrived on a link."""
        self._frame(link.peer_node, frame, link)

    def _frame(self, peer: int, frame: Frame, link: Link | None) -> None:
        if isinstance(frame, TunnelInit):
            self._taken(peer, frame, link)
            return
        assert isinstance(frame, (TunnelData, TunnelAllow, TunnelClose))
        tunnel = self._tunnels.get(frame.tunnel)
        if tunnel is None or tunnel.peer != peer:
            return  # closed here meanwhile: what crossed our close is moot
        try:
            tunnel.frame_received(frame)
        except ProtocolError as exc:
            tunnel._break(f"the far end broke the protocol: {exc}")
            raise

    def peer_lost(self, peer: int) -> None:
        """The last link to ``peer`` is gone: its tunnels break."""
        for tunnel in list(self._tunnels.values()):
            if tunnel.peer == peer:
                tunnel._break("the link to the far end broke")

    # ------------------------------------------------------------- statistics

    @property
    def receivers(self) -> int:
        """Receivers of tunnels open now."""
        return sum(len(group) for group in self._inboxes.values())

    @property
    def open(self) -> int:
        """Tunnels open now."""
        return len(self._tunnels)

    def bytes_moved(self) -> tuple[int, int]:
        """Message bytes sent and received through this node's tunnels, ever."""
        figures = [tunnel.statistics() for tunnel in self._tunnels.values()]
        return (
            self._bytes_sent + sum(f.bytes_sent for f in figures),
            self._bytes_received + sum(f.bytes_received for f in figures),
        )


class _LocalPath:
    """The path of a tunnel whose two ends are on this node: frames are handed
    over directly, with the same flow control as over a link."""

    def __init__(self, tunnels: Tunnels) -> None:
        self._tunnels = tunnels

    @property
    def is_open(self) -> bool:
        return True

    @property
    def has_send_capacity(self) -> bool:
        return True

    async def wait_send_capacity(self) -> None:
        await trio.lowlevel.checkpoint()

    def send_nowait(self, frame: Frame) -> None:
        self._tunnels._frame(self._tunnels._port.id, frame, None)

    send_control_nowait = send_nowait

"""What the messaging patterns may ask of the overlay, and what it tells them.

The patterns (``iris_trio/patterns/``) depend on these two interfaces only,
never on the driver or the node: :class:`OverlayPort` is what they call down
(trees, capacity-weighted anycast, direct sends, links), :class:`OverlayUpcalls`
is the one object the driver calls up with what arrives (as the original Iris's
scribe callback interface). :class:`~iris_trio.overlay.driver.OverlayDriver`
implements the port over real links; the node implements the upcalls by
handing each to its pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..transport.link import Link
from ..wire.frames import Frame
from .trees import ReplyDelivery, RequestDelivery, TreeDelivery

__all__ = ["OverlayPort", "OverlayUpcalls"]


class OverlayPort(Protocol):
    """The overlay as the patterns see it."""

    @property
    def id(self) -> int:
        """This node's id."""
        ...

    @property
    def address(self) -> str:
        """Where this node accepts links ("host:port")."""
        ...

    @property
    def ready(self) -> bool:
        """True once the node has joined the overlay."""
        ...

    async def wait_joined(self) -> None:
        """Wait until the node has joined the overlay."""
        ...

    def join_tree(self, tree: int) -> None:
        """Become a member of tree ``tree`` (a cluster or a topic)."""
        ...

    def leave_tree(self, tree: int) -> None:
        """Stop being a member of ``tree``."""
        ...

    async def wait_linked(self, tree: int) -> None:
        """Wait until this node is linked to the root of ``tree``."""
        ...

    def publish(self, tree: int, events: Sequence[bytes]) -> int:
        """Send ``events`` to every member of ``tree`` in one frame."""
        ...

    def tree_links(self, tree: int) -> list[Link]:
        """The links an event published on ``tree`` leaves on (for pacing)."""
        ...

    def request(
        self, tree: int, request_id: bytes, timeout_ms: int, data: bytes, kind: int = 0
    ) -> None:
        """Anycast a request (kind 0) or a tunnel opening (kind 1) to one member
        of ``tree`` that takes that kind, by spare capacity."""
        ...

    def reply(self, requester: int, request_id: bytes, status: int, data: bytes) -> None:
        """Answer a request: directly to the requester, or routed to it."""
        ...

    def set_spare(self, tree: int, spare: int, serves: int | None = None) -> None:
        """Report this member's spare capacity (and the kinds it takes)."""
        ...

    def peer_link(self, node: int) -> Link | None:
        """The link in use to ``node``, if any."""
        ...

    async def connect_peer(self, node: int, address: str) -> Link:
        """A link to ``node``: the one in use, or one dialled at ``address``."""
        ...

    def hold(self, node: int) -> None:
        """Keep the link to ``node`` up (e.g. while a tunnel uses it)."""
        ...

    def release(self, node: int) -> None:
        """Undo one :meth:`hold`."""
        ...


class OverlayUpcalls(Protocol):
    """What the overlay hands up, each as it arrives (synchronously, from the
    driver's flush: an upcall may call the port again)."""

    def events_received(self, delivery: TreeDelivery) -> None:
        """Events published on a tree this node is a member of."""
        ...

    def request_received(self, delivery: RequestDelivery) -> None:
        """A request (or tunnel opening) for this node as a cluster member."""
        ...

    def reply_received(self, delivery: ReplyDelivery) -> None:
        """The answer to a request this node made."""
        ...

    def frame_received(self, link: Link, frame: Frame) -> None:
        """A frame of the patterns' own (tunnels) arrived on a link."""
        ...

    def peer_lost(self, node: int) -> None:
        """The last link to ``node`` is gone."""
        ...

    def leaving(self) -> None:
        """The node starts to leave the overlay; it can still send."""
        ...

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
from .frames import Route
from .trees import AnycastDelivery, BounceDelivery, TreeDelivery

__all__ = ["IgnoredUpcalls", "OverlayPort", "OverlayUpcalls"]


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

    async def wait_linked(self, tree: int, serves: int = 0) -> None:
        """Wait until this node is linked to the root of ``tree`` and the root
        knows its member takes the kinds of request in ``serves``."""
        ...

    def publish(self, tree: int, events: Sequence[bytes]) -> int:
        """Send ``events`` to every member of ``tree`` in one frame."""
        ...

    def tree_links(self, tree: int) -> list[Link]:
        """The links an event published on ``tree`` leaves on (for pacing)."""
        ...

    def paused_until(self, tree: int) -> float:
        """Until when a publisher on ``tree`` should wait (a branch of the tree
        asked it to slow down); -inf when it need not."""
        ...

    def anycast(self, tree: int, kind: int, tag: bytes, payload: bytes) -> None:
        """Send ``payload`` to one member of ``tree`` that takes ``kind``, chosen by
        spare capacity; if nobody takes it, a bounce with ``tag`` comes back."""
        ...

    def send_to(self, node: int, address: str, frame: Frame) -> None:
        """Send ``frame`` to ``node`` (over the link to it, or routed to its id;
        ``address`` is where it accepts links)."""
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

    def anycast_received(self, delivery: AnycastDelivery) -> None:
        """An anycast for this node as a member of its tree."""
        ...

    def bounce_received(self, delivery: BounceDelivery) -> None:
        """One of this node's anycasts found nobody to take it."""
        ...

    def frame_received(self, link: Link | None, frame: Frame) -> None:
        """A frame of the patterns' own arrived: on ``link``, or routed (None)."""
        ...

    def peer_lost(self, node: int) -> None:
        """The last link to ``node`` is gone."""
        ...

    def leaving(self) -> None:
        """The node starts to leave the overlay; it can still send."""
        ...

    def routed(self, route: Route) -> None:
        """A routed message no tree takes reached this node (the closest to its key)."""
        ...


class IgnoredUpcalls:
    """Upcalls that ignore everything (a bare driver's; subclass to take some)."""

    def events_received(self, delivery: TreeDelivery) -> None:
        """Ignored."""

    def anycast_received(self, delivery: AnycastDelivery) -> None:
        """Ignored."""

    def bounce_received(self, delivery: BounceDelivery) -> None:
        """Ignored."""

    def frame_received(self, link: Link | None, frame: Frame) -> None:
        """Ignored."""

    def peer_lost(self, node: int) -> None:
        """Ignored."""

    def leaving(self) -> None:
        """Ignored."""

    def routed(self, route: Route) -> None:
        """Ignored."""

"""Tree frames (kinds 21-28)."""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob, Sequence, Text, UInt
from ..wire.frames import Frame, frame_kind

__all__ = [
    "MAX_EVENTS",
    "MAX_TAG",
    "NodeMessage",
    "TreeAck",
    "TreeAnycast",
    "TreeBounce",
    "TreeHeartbeat",
    "TreeJoin",
    "TreePrune",
    "TreePublish",
    "TreeSlow",
]


@frame_kind(21, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeJoin(Frame):
    """Routed towards a tree's id: every hop adopts the previous one as a child."""

    tree: bytes


@frame_kind(22, Blob(exact=16), UInt(32), UInt(64), UInt(8))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeHeartbeat(Frame):
    """Child to parent, periodically and when its capacity changes: "I am still
    your child, my subtree can take ``spare`` more requests now, I have had
    ``received`` requests from you" (so the parent knows how many are on the
    way), "and members in my subtree take the kinds of request in ``serves``"
    (a bit per kind: 1 requests, 2 tunnels)."""

    tree: bytes
    spare: int
    received: int
    serves: int = 0


@frame_kind(23, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreePrune(Frame):
    """Child to parent: "forget me" (I have no members or children left)."""

    tree: bytes


#: Most events one TreePublish carries.
MAX_EVENTS = 1024


@frame_kind(24, Blob(exact=16), Blob(exact=16), UInt(32), UInt(64), Sequence(Blob(), MAX_EVENTS))
@dataclasses.dataclass(frozen=True, slots=True)
class TreePublish(Frame):
    """Events for every member of a tree: routed to the root, then passed along
    the tree's links (from any node of the tree to all its tree neighbours but
    the one it came from).

    A publisher sends the events it publishes in a burst together, in order.

    Attributes:
        tree: the tree's id.
        publisher: the publishing node's id.
        epoch: drawn at random when the publisher's node starts, so that a
            restarted publisher's numbers are not taken for old ones.
        sequence: the publisher's sequence number on this tree of the first
            event (from 1); the others follow it, one each.
        events: the events, in order (at least one).
    """

    tree: bytes
    publisher: bytes
    epoch: int
    sequence: int
    events: tuple[bytes, ...]


#: Longest anycast tag (what a bounce returns to the origin).
MAX_TAG = 32


@frame_kind(25, Blob(exact=16), Blob(exact=16), Text(256), UInt(8), Blob(max_size=MAX_TAG), Blob())
@dataclasses.dataclass(frozen=True, slots=True)
class TreeAnycast(Frame):
    """An opaque payload for one member of a tree that takes its ``kind``:
    routed to the root, then down the tree towards the subtree with the most
    spare capacity (as members report it).

    Attributes:
        tree: the tree's id.
        origin: the sending node's id.
        address: where the origin accepts links (the member may answer or dial
            it there; a bounce reaching a node that does not know it uses it).
        kind: what the payload is for; only members that take this kind (bits
            of :attr:`TreeHeartbeat.serves`) are chosen.
        tag: the origin's name for it, returned in a :class:`TreeBounce`.
        payload: the layer above's (the tree never looks inside).
    """

    tree: bytes
    origin: bytes
    address: str
    kind: int
    tag: bytes
    payload: bytes


@frame_kind(26, Blob(max_size=MAX_TAG), UInt(8), Text(256))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeBounce(Frame):
    """An anycast that found nobody to take it, back to its origin.

    Attributes:
        tag: the anycast's tag.
        reason: 0 nobody in the tree takes it (``detail`` says why); 1 the tree
            is changing where it went: send it again; 2 it was lost on its way
            (it may have reached a member: not to be sent again).
        detail: a few words for the origin's error message.
    """

    tag: bytes
    reason: int
    detail: str = ""


@frame_kind(28, Blob(exact=16), Text(256), Blob())
@dataclasses.dataclass(frozen=True, slots=True)
class NodeMessage(Frame):
    """A frame for one node, routed to its id (when no link to it is up).

    Attributes:
        target: the node's id.
        address: where it accepts links: a node the message reaches that does
            not know the target yet (it joined a moment ago) dials it there and
            hands the message over.
        frame: the encoded frame for the target.
    """

    target: bytes
    address: str
    frame: bytes


@frame_kind(27, Blob(exact=16), UInt(8))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeAck(Frame):
    """Parent to child: "I am linked to the root" (so the child is too), "and
    the root knows that your subtree takes the kinds of request in ``serves``".

    Sent when a join is taken, when the parent itself becomes linked or learns
    that the root knows more (or less), and in answer to heartbeats; a member
    knows it can be reached once it has one, and that requests of a kind reach
    it once that kind's bit is in ``serves`` (see :attr:`TreeHeartbeat.serves`).
    """

    tree: bytes
    serves: int = 0


@frame_kind(29, Blob(exact=16), UInt(16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeSlow(Frame):
    """From a node of a tree to a publisher on it: "a branch of mine that keeps
    up is falling behind: publish nothing more on ``tree`` for ``pause_ms``"
    (sent again while it lasts). Hop-by-hop pacing: publishers go at the pace
    of the slowest branch that keeps up, rather than interior nodes dropping."""

    tree: bytes
    pause_ms: int

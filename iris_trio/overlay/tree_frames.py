"""Tree frames (kinds 21-27)."""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob, Sequence, Text, UInt
from ..wire.frames import Frame, frame_kind

__all__ = [
    "MAX_EVENTS",
    "TreeAck",
    "TreeHeartbeat",
    "TreeJoin",
    "TreePrune",
    "TreePublish",
    "TreeReply",
    "TreeRequest",
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


@frame_kind(24, Blob(exact=16), Blob(exact=16), UInt(64), Sequence(Blob(), MAX_EVENTS))
@dataclasses.dataclass(frozen=True, slots=True)
class TreePublish(Frame):
    """Events for every member of a tree: routed to the root, then sent down.

    A publisher sends the events it publishes in a burst together, in order.

    Attributes:
        tree: the tree's id.
        publisher: the publishing node's id.
        sequence: the publisher's sequence number on this tree of the first
            event (from 1); the others follow it, one each.
        events: the events, in order (at least one).
    """

    tree: bytes
    publisher: bytes
    sequence: int
    events: tuple[bytes, ...]


@frame_kind(
    25, Blob(exact=16), Blob(exact=16), Blob(exact=16), Text(256), UInt(32), UInt(8), Blob()
)
@dataclasses.dataclass(frozen=True, slots=True)
class TreeRequest(Frame):
    """A request for one member of a tree: routed to the root, then down the tree
    towards the subtree with the most spare capacity.

    Attributes:
        tree: the cluster's tree id.
        request_id: unique per request (the requester matches the reply by it).
        requester: the requesting node's id (replies are routed to it).
        address: where the requester accepts links (for tunnels, and for a reply
            that reaches a node that does not know the requester yet).
        timeout_ms: the time the requester still waits, in milliseconds.
        kind: 0 a request; 1 a tunnel to open.
        data: the request.
    """

    tree: bytes
    request_id: bytes
    requester: bytes
    address: str
    timeout_ms: int
    kind: int
    data: bytes


@frame_kind(26, Blob(exact=16), UInt(8), Blob(), Text(256))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeReply(Frame):
    """The answer to a :class:`TreeRequest`, routed to the requester.

    Attributes:
        request_id: the request answered.
        status: 0 reply, 1 the handler failed (data: its message), 2 nobody is in
            the cluster, 3 the member was overloaded, 4 the member did not handle
            it (leaving, or not serving): send it again.
        data: the reply or the error message (UTF-8).
        address: the requester's address, from its request: a node that the
            routed reply reaches without knowing the requester (it joined a
            moment ago) connects there and hands the reply over.
    """

    request_id: bytes
    status: int
    data: bytes
    address: str = ""


@frame_kind(27, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeAck(Frame):
    """Parent to child: "I am linked to the root" (so the child is too).

    Sent when a join is taken, when the parent itself becomes linked, and in
    answer to heartbeats; a member knows it can be reached once it has one.
    """

    tree: bytes

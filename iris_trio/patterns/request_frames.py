"""Request/reply frames (kinds 68-70).

A request travels as the payload of a tree anycast (``TreeAnycast``), whose tag
is the request id, or, to a member the requester already has a link to and knows
to have room (from its answers), straight over that link as a
:class:`RequestDirect`; its answer goes back to the requester as a
:class:`RequestReply`, over the link to it or routed to its id.
"""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob, UInt
from ..wire.frames import Frame, frame_kind

__all__ = ["RequestBody", "RequestDirect", "RequestReply"]


@frame_kind(68, UInt(32), Blob())
@dataclasses.dataclass(frozen=True, slots=True)
class RequestBody(Frame):
    """What a request (or a tunnel opening) carries to the member.

    Attributes:
        timeout_ms: the time the requester still waits, in milliseconds.
        data: the request (empty for a tunnel opening).
    """

    timeout_ms: int
    data: bytes


@frame_kind(69, Blob(exact=16), UInt(8), Blob(), UInt(32))
@dataclasses.dataclass(frozen=True, slots=True)
class RequestReply(Frame):
    """The answer to a request, for the requester.

    Attributes:
        request_id: the request answered (its anycast's tag).
        status: 0 reply, 1 the handler failed (data: its type name, a newline,
            its message), 3 the member was overloaded, 4 the member did not
            handle it (leaving, or not serving): send it again.
        data: the reply, or the error (UTF-8).
        room: in a reply or a handler's failure, 1 + the requests the member's
            node can take now for the request's cluster (its spare capacity
            there); 0: not said. A requester with a link to the member may send
            it the next requests directly (see :class:`RequestDirect`).
    """

    request_id: bytes
    status: int
    data: bytes
    room: int = 0


@frame_kind(70, Blob(exact=16), Blob(exact=16), UInt(32), Blob())
@dataclasses.dataclass(frozen=True, slots=True)
class RequestDirect(Frame):
    """A request sent over the link to a member of its cluster, not through the
    cluster's tree: the requester knows the member and its room from its last
    answers (:attr:`RequestReply.room`). Answered as any request; a member that
    does not serve ``tree`` (any more) answers 4 (send it again), and the
    requester sends it through the tree.

    Attributes:
        tree: the cluster's tree id.
        request_id: as a routed request's tag.
        timeout_ms / data: as :class:`RequestBody`.
    """

    tree: bytes
    request_id: bytes
    timeout_ms: int
    data: bytes

"""Request/reply frames (kinds 68-69).

A request travels as the payload of a tree anycast (``TreeAnycast``), whose tag
is the request id; its answer goes back to the requester as a
:class:`RequestReply`, over the link to it or routed to its id.
"""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob, UInt
from ..wire.frames import Frame, frame_kind

__all__ = ["RequestBody", "RequestReply"]


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


@frame_kind(69, Blob(exact=16), UInt(8), Blob())
@dataclasses.dataclass(frozen=True, slots=True)
class RequestReply(Frame):
    """The answer to a request, for the requester.

    Attributes:
        request_id: the request answered (its anycast's tag).
        status: 0 reply, 1 the handler failed (data: its type name, a newline,
            its message), 3 the member was overloaded, 4 the member did not
            handle it (leaving, or not serving): send it again.
        data: the reply, or the error (UTF-8).
    """

    request_id: bytes
    status: int
    data: bytes

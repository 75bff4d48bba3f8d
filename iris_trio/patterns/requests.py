"""The member side of request/reply: incoming requests and their answers."""

from __future__ import annotations

from collections.abc import Callable

import trio

from .queue import BoundedQueue, Overflow

__all__ = [
    "MAX_QUEUED_BYTES",
    "IncomingRequests",
    "Request",
    "decode_failure",
    "encode_failure",
]

#: Bytes of requests a member queues before refusing more (as Iris).
MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: Requests are bounded in bytes, not in number.
_UNCOUNTED = 2**62

#: Called once per request with its answer: a status and its data, or (None,
#: b"") when it is dropped unanswered (the requester had stopped waiting).
Answer = Callable[["Request", int | None, bytes], None]


def encode_failure(message: str, type_name: str = "") -> bytes:
    """The data of a failed request's answer: the exception type's name (may be
    empty), a newline, the message."""
    return f"{type_name}\n{message}".encode("utf-8", "replace")


def decode_failure(data: bytes) -> tuple[str, str]:
    """(type name, message) of a failure's data (see :func:`encode_failure`)."""
    text = data.decode("utf-8", "replace")
    type_name, newline, message = text.partition("\n")
    if not newline or (type_name and not all(p.isidentifier() for p in type_name.split("."))):
        return "", text  # not in that form: all of it is the message
    return type_name, message


class Request:
    """One request to this member.

    Attributes:
        data: the request's bytes.
        deadline: the trio time after which the requester stops waiting.
    """

    __slots__ = (
        "_answer",
        "_answered",
        "_started",
        "data",
        "deadline",
        "request_id",
        "requester",
    )

    def __init__(
        self, data: bytes, deadline: float, request_id: bytes, requester: int, answer: Answer
    ) -> None:
        self.data = data
        self.deadline = deadline
        self.request_id = request_id
        self.requester = requester
        self._answer = answer
        self._answered = False
        # False while handed to a handler that has not begun (push model): such
        # a request can still go to another member if this one stops.
        self._started = True

    @property
    def expired(self) -> bool:
        """True once the requester has stopped waiting."""
        return trio.current_time() >= self.deadline

    def _once(self, status: int, data: bytes) -> None:
        if self._answered:
            raise RuntimeError("this request was already answered")
        self._answered = True
        self._answer(self, status, data)

    async def reply(self, data: bytes) -> None:
        """Send the reply (once). A checkpoint."""
        self.reply_nowait(data)
        await trio.lowlevel.checkpoint()

    async def fail(self, message: str, type_name: str = "") -> None:
        """Answer with an error: the requester gets ``RemoteError(message,
        type_name)``. A checkpoint."""
        self.fail_nowait(message, type_name)
        await trio.lowlevel.checkpoint()

    def reply_nowait(self, data: bytes) -> None:
        """Send the reply (once) without a checkpoint."""
        if type(data) is not bytes:
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self._once(0, data)

    def fail_nowait(self, message: str, type_name: str = "") -> None:
        """Answer with an error (once) without a checkpoint."""
        self._once(1, encode_failure(str(message), str(type_name)))

    def _drop(self) -> None:
        """Give up on this request without answering (its requester stopped
        waiting): its place among the member's requests in flight is free again."""
        if not self._answered:
            self._answered = True
            self._answer(self, None, b"")

    @property
    def answered(self) -> bool:
        """True once answered (or given back because the member stopped)."""
        return self._answered


class IncomingRequests(BoundedQueue[Request]):
    """Requests to this member, oldest first; those whose deadline passed while
    queued are dropped (counted), never handed out. Beyond ``max_bytes`` of
    queued requests, more are refused (the requester gets RemoteError)."""

    def __init__(
        self,
        on_change: Callable[[], None],
        on_close: Callable[[IncomingRequests], None],
        *,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        super().__init__(
            _UNCOUNTED,
            Overflow.REFUSE,
            max_bytes=max_bytes,
            size=_request_size,
            expired=_request_expired,
            closed_message="no longer receiving requests",
        )
        self._on_change = on_change
        self._on_close = on_close
        self._in_hand: set[Request] = set()  # received, not yet answered

    @property
    def queued_bytes(self) -> int:
        """Bytes of requests waiting to be received."""
        return self.buffered_bytes

    @property
    def expired(self) -> int:
        """Requests dropped unhandled because their deadline passed while queued."""
        return self.expired_count

    def _push(self, request: Request) -> bool:
        """Queue an arriving request; False if the queue is full (refused)."""
        if not self.push(request):
            return False
        self._on_change()
        return True

    def _taken(self, item: Request) -> None:
        self._in_hand.add(item)
        self._on_change()

    def _emptied(self) -> None:
        self._on_change()

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        return len(self._in_hand)

    def _answered(self, request: Request) -> None:
        self._in_hand.discard(request)
        self._on_change()

    async def aclose(self) -> None:
        """Stop receiving: queued requests go back to be sent to another member;
        received ones never answered fail (RemoteError; they may have been
        partly handled, so they are not sent again)."""
        if self.close_nowait():
            self._on_close(self)
        await trio.lowlevel.checkpoint()

    def take_every(self) -> tuple[list[Request], list[Request]]:
        """Remove every request (when closing): those still queued, and those
        received but never answered."""
        taken = list(self._in_hand)
        self._in_hand.clear()
        return self.take_all(), taken


def _request_size(request: Request) -> int:
    return len(request.data)


def _request_expired(request: Request) -> bool:
    return request.expired

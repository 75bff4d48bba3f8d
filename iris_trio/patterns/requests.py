"""The member side of request/reply: incoming requests and their answers."""

from __future__ import annotations

import collections
from collections.abc import Callable

import trio

from .._util import receive_parked

__all__ = ["IncomingRequests", "Request", "decode_failure", "encode_failure"]

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


class IncomingRequests(trio.abc.ReceiveChannel[Request]):
    """Requests to this member, oldest first; those whose deadline passed while
    queued are dropped (counted), never handed out."""

    def __init__(
        self, on_change: Callable[[], None], on_close: Callable[[IncomingRequests], None]
    ) -> None:
        self._queue: collections.deque[Request] = collections.deque()
        self._waiting = trio.lowlevel.ParkingLot()
        self._on_change = on_change
        self._on_close = on_close
        self._closed = False
        self.queued_bytes = 0
        self.expired = 0
        self._taken: set[Request] = set()  # received, not yet answered

    def __len__(self) -> int:
        return len(self._queue)

    def _push(self, request: Request) -> None:
        self._queue.append(request)
        self.queued_bytes += len(request.data)
        self._waiting.unpark()
        self._on_change()

    def receive_nowait(self) -> Request:
        """The next live request; raises trio.WouldBlock if there is none."""
        if self._closed:
            raise trio.ClosedResourceError("no longer receiving requests")
        while self._queue:
            request = self._queue.popleft()
            self.queued_bytes -= len(request.data)
            if request.expired:
                self.expired += 1
                continue
            self._taken.add(request)
            self._on_change()
            return request
        self._on_change()
        raise trio.WouldBlock

    async def receive(self) -> Request:
        """Wait for the next live request."""
        return await receive_parked(self.receive_nowait, self._waiting)

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        return len(self._taken)

    def _answered(self, request: Request) -> None:
        self._taken.discard(request)
        self._on_change()

    async def aclose(self) -> None:
        """Stop receiving: queued requests go back to be sent to another member;
        received ones never answered fail (RemoteError; they may have been
        partly handled, so they are not sent again)."""
        if not self._closed:
            self._closed = True
            self._waiting.unpark_all()
            self._on_close(self)
        await trio.lowlevel.checkpoint()

    def take_all(self) -> tuple[list[Request], list[Request]]:
        """Remove every request (when closing): those still queued, and those
        received but never answered."""
        queued = list(self._queue)
        self._queue.clear()
        self.queued_bytes = 0
        taken = list(self._taken)
        self._taken.clear()
        return queued, taken

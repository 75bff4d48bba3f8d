"""Request/reply: the member side (:class:`Responder`, incoming requests and
their answers), the answers' statuses and the encoding of failures (the
requesting side: :mod:`.requester`).

A request goes to one member of a cluster, chosen by the cluster's tree by spare
capacity; it is answered once: a reply, a typed error, or its timeout. A member
that did not handle it answers "retry" and the requester sends it again, which
cannot run it twice.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from ..errors import (
    MessageTooLargeError,
    ProtocolError,
)
from ..overlay.ids import from_bytes
from ..overlay.port import OverlayPort
from ..overlay.trees import AnycastDelivery
from ..wire.frames import FrameCodec
from .limits import check_message
from .membership import REQUEST, Membership, wait_in_tree
from .queue import BoundedQueue, Overflow
from .request_frames import RequestBody, RequestDirect, RequestReply

__all__ = [
    "MAX_QUEUED_BYTES",
    "IncomingRequests",
    "Request",
    "Responder",
    "decode_failure",
    "encode_failure",
]

#: Answers (RequestReply.status; NO_RESPONDERS and LOST_ON_WAY only here, from a bounce).
REPLY, REMOTE_ERROR, NO_RESPONDERS, OVERLOADED, RETRY = 0, 1, 2, 3, 4
#: Not answers (see run_notices): member to requester, "I (the member at the
#: other end of this link) hold it: it may have run" (HELD), "I hold it queued:
#: it has not started" (QUEUED), "may I start it now?" (CLAIM); requester to
#: member, "start it" (GO), "do not: it went elsewhere or nobody waits" (GONE).
HELD, QUEUED, CLAIM, GO, GONE = 5, 6, 7, 8, 9
#: How long a member waits for the answer to a CLAIM before dropping the request.
CLAIM_TIMEOUT: Final = 5.0
LOST_ON_WAY = 16
#: Not on the wire: the requester's own timeout passed, or the node stopped
#: while the call waited (see Requester.run_timeouts).
TIMED_OUT, STOPPED = 17, 18
#: A member tells a requester that it holds its request once it has held it this
#: long unanswered (quick requests cost nothing more): the requester then watches
#: the link to it, and a member that dies fails its requests at once.
HELD_NOTICE_AFTER: Final = 0.05
#: A member's spare capacity goes to its trees at most once each this many
#: seconds (a quarter of the trees' own ``report_interval``): not a task
#: switch per request when requests come one at a time.
REPORT_PAUSE: Final = 0.005
#: The codec of request frames (bodies inside anycasts, answers).
request_codec = FrameCodec()

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
    """One request to this member (from :meth:`Node.requests <iris_trio.Node.requests>`).

    Answer it once, with :meth:`reply` or :meth:`fail`, before its deadline:
    the requester waits for nothing else. Example::

        async with node.requests("calc") as incoming:
            async for request in incoming:
                if request.expired:
                    continue  # the requester has stopped waiting
                try:
                    total = sum(map(int, request.data.split()))
                except ValueError as exc:
                    await request.fail(str(exc), "ValueError")
                else:
                    await request.reply(str(total).encode())

    Attributes:
        data: the request's bytes.
        deadline: the trio time after which the requester stops waiting.
    """

    __slots__ = (
        "_address",
        "_answer",
        "_answered",
        "_handed",
        "_noticed",
        "_queued_notice",
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
        self._address = ""  # where the requester accepts links
        self._noticed = False  # the requester was told we hold it (see run_notices)
        # The requester was told it is queued here, not started: it may send it
        # elsewhere if we die, so it is handed out only once the requester says
        # GO to our CLAIM.
        self._queued_notice = False
        self._handed = False  # taken from the queue (by a receiver, or to be claimed)
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
        """Send the reply (once). A checkpoint.

        Cancellation: the reply is on its way before the checkpoint, so a
        cancelled ``reply()`` has answered all the same.

        Raises:
            TypeError: ``data`` is not bytes (the request stays unanswered).
            RuntimeError: the request was already answered.
        """
        self.reply_nowait(data)
        await trio.lowlevel.checkpoint()

    async def fail(self, message: str, type_name: str = "") -> None:
        """Answer with an error: the requester gets ``RemoteError(message,
        type_name)``. A checkpoint.

        Cancellation: as :meth:`reply`: a cancelled ``fail()`` has answered.

        Raises:
            RuntimeError: the request was already answered.
        """
        self.fail_nowait(message, type_name)
        await trio.lowlevel.checkpoint()

    def reply_nowait(self, data: bytes) -> None:
        """Send the reply (once) without a checkpoint; raises as :meth:`reply`."""
        check_message(data)  # TypeError, MessageTooLargeError
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
    queued requests, more are refused (the requester gets RemoteError).

    From ``async with node.requests(cluster) as incoming``: a trio
    ``ReceiveChannel`` of :class:`Request`; its ``async with`` (the node's)
    closes it. Example::

        async with node.requests("calc", limit=8) as incoming:
            async for request in incoming:
                await request.reply(await add(request.data))
    """

    def __init__(
        self,
        on_change: Callable[[], None],
        on_close: Callable[[IncomingRequests], None],
        *,
        max_bytes: int = MAX_QUEUED_BYTES,
        claim: Callable[[Request, IncomingRequests], None] | None = None,
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
        self._claim = claim
        #: Called when a request may be taken (one arrived, or a claim ended),
        #: for a pool of workers (see _HandlerPool); pull receivers park instead.
        self.on_arrival: Callable[[], None] | None = None
        self._in_hand: set[Request] = set()  # received (or being claimed), not answered
        self._ready: collections.deque[Request] = collections.deque()  # claimed: GO

    def receive_nowait(self) -> Request:
        """The next request; raises trio.WouldBlock if there is none, and
        trio.ClosedResourceError once closed. A request whose requester was told
        it is queued here is claimed first (asked GO of its requester): it comes
        out once the requester agrees, so it never runs here and elsewhere."""
        while self._ready and not self.closed:
            request = self._ready.popleft()
            if not request.answered and not request.expired:
                request._started = True
                return request
            request._drop()
        request = super().receive_nowait()
        if not request._queued_notice or self._claim is None:
            return request
        # One claim per receiver that asks: the rest stay queued (and may still
        # go elsewhere if this member dies) until a receiver is ready for them.
        request._started = False  # not yet: if we stop, it may go elsewhere
        self._claim(request, self)  # in hand meanwhile: it counts as in flight
        raise trio.WouldBlock

    def _claimed(self, request: Request, go: bool) -> None:
        """The requester answered our CLAIM (or did not in time: ``go`` False)."""
        if request.answered or self.closed:
            return
        if not go:
            # It never ran here and never will: the requester may send it to
            # another member (if it already has, or stopped waiting, it ignores this).
            request._once(RETRY, b"the member could not claim it")
        else:
            self._ready.append(request)
        self._waiting.unpark()  # (if not claimed, the receiver that claimed takes the next)
        if self.on_arrival is not None:
            self.on_arrival()

    @property
    def waiting(self) -> int:
        """Requests a receiver can take now or soon: queued, or claimed (GO)."""
        return len(self) + len(self._ready)

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
        if self.on_arrival is not None:
            self.on_arrival()
        return True

    def _taken(self, item: Request) -> None:
        item._handed = True
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
        partly handled, so they are not sent again). A checkpoint.

        Cancellation: the receiver is closed (and its requests sent on or
        failed) before the checkpoint: a cancelled ``aclose()`` has closed it.
        """
        if self.close_nowait():
            self._on_close(self)
        await trio.lowlevel.checkpoint()

    def take_every(self) -> tuple[list[Request], list[Request]]:
        """Remove every request (when closing): those still queued, and those
        received but never answered."""
        taken = list(self._in_hand)
        self._in_hand.clear()
        self._ready.clear()
        return self.take_all(), taken


def _request_size(request: Request) -> int:
    return len(request.data)


def _request_expired(request: Request) -> bool:
    return request.expired


# ------------------------------------------------------------------- serving


class Responder:
    """The member side: this node's receivers of requests, per cluster, and the
    spare capacity they report to the cluster's tree."""

    def __init__(self, port: OverlayPort, membership: Membership) -> None:
        self._port = port
        self._membership = membership
        # Per tree, the local receivers (several when a relay serves more than one
        # client of a cluster): (queue, limit).
        self._incoming: dict[int, list[tuple[IncomingRequests, int]]] = {}
        self.received = self.refused = 0
        self.replied = 0  # replies (not errors) its members sent
        self._expired = 0
        # Requests held, oldest first, for the HELD notices (see run_notices).
        self._unnoticed: collections.deque[tuple[float, Request]] = collections.deque()
        self._arrivals = trio.lowlevel.ParkingLot()
        self.notices_sent = 0
        # CLAIMs waiting for their answer, by request id.
        self._claims: dict[bytes, tuple[Request, IncomingRequests, trio.Event]] = {}
        # Spare capacity of each receiver and their total per tree (kept by
        # differences), and whose turn it is per tree (see _pick).
        self._spares: dict[IncomingRequests, int] = {}
        self._spare_totals: dict[int, int] = {}
        self._turns: dict[int, int] = {}
        self._go: set[bytes] = set()
        self._spawn: Callable[..., None] | None = None
        # Trees whose spare changed since the last report (see run_reports).
        self._changed: set[int] = set()
        self._reporter = trio.lowlevel.ParkingLot()
        self._reporting = False
        #: Where answers to this node's own requests go (set by the node: its
        #: Requester), without a trip through the overlay.
        self.local_answer: Callable[[RequestReply], None] | None = None

    @property
    def receivers(self) -> int:
        """Receivers of requests open now."""
        return sum(len(group) for group in self._incoming.values())

    @property
    def expired(self) -> int:
        """Requests dropped unhandled because they expired while queued."""
        return self._expired + sum(
            incoming.expired for group in self._incoming.values() for incoming, _ in group
        )

    @asynccontextmanager
    async def requests(self, cluster: str, limit: int) -> AsyncIterator[IncomingRequests]:
        """Receive the requests sent to ``cluster`` (see Node.requests)."""
        async with self._membership.member(cluster) as tree:
            # In place before the tree hears of this member, so that its first
            # report already says it takes requests.
            incoming = IncomingRequests(
                lambda: self._spare_changed(tree, incoming, limit),
                self._stopped,
                claim=self._claim,
            )
            self._incoming.setdefault(tree, []).append((incoming, limit))
            self._spares[incoming] = limit
            self._spare_totals[tree] = self._spare_totals.get(tree, 0) + limit
            self._membership.takes(tree, REQUEST, True)
            self._report_spare(tree)
            try:
                await wait_in_tree(self._port, tree, REQUEST)
                yield incoming
            finally:
                await incoming.aclose()

    async def serve(
        self,
        handler: Callable[[bytes], Awaitable[bytes]],
        cluster: str,
        limit: int,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Answer the requests of ``cluster`` with ``handler`` (see Node.serve)."""
        async with self.requests(cluster, limit) as incoming, trio.open_nursery() as tasks:
            pool = _HandlerPool(handler, incoming, limit, tasks)
            incoming.on_arrival = pool.wake
            try:
                if incoming.waiting:
                    pool.wake()
                task_status.started()
                await trio.sleep_forever()
            finally:  # what arrives while the workers end stays queued (then goes back)
                incoming.on_arrival = None
                pool.close()

    def _report_spare(self, tree: int) -> None:
        if tree in self._incoming:
            self._membership.report_spare(tree, self._spare_totals.get(tree, 0))

    def _spare_changed(self, tree: int, incoming: IncomingRequests, limit: int) -> None:
        """One receiver's spare capacity may have changed: the node's total for
        ``tree`` follows by the difference (O(1), however many receivers)."""
        spare = limit - incoming.in_flight - len(incoming)
        before = self._spares.get(incoming)
        if before is None or spare == before:
            return
        self._spares[incoming] = spare
        self._spare_totals[tree] = self._spare_totals.get(tree, 0) + spare - before
        if not self._reporting:
            self._membership.report_spare(tree, self._spare_totals[tree])
        elif tree not in self._changed:  # (a request moves it up to 3 times: 1 report)
            self._changed.add(tree)
            if len(self._changed) == 1:
                self._reporter.unpark()

    async def run_reports(self) -> None:
        """Report the spare capacity of the trees whose capacity changed: at
        once after a quiet spell, then at most once each ``REPORT_PAUSE``
        whatever the number of changes (a request arriving, taken and answered
        changes it three times; the trees pass a change on at most once each
        ``report_interval`` anyway). Run until cancelled."""
        self._reporting = True
        try:
            while True:
                while not self._changed:
                    await self._reporter.park()
                changed, self._changed = self._changed, set()
                for tree in changed:
                    if tree in self._incoming:
                        self._report_spare(tree)
                await trio.sleep(REPORT_PAUSE)  # (changes meanwhile: one report)
        finally:
            self._reporting = False

    def _stopped(self, incoming: IncomingRequests) -> None:
        self._expired += incoming.expired
        for tree, entries in list(self._incoming.items()):
            if not any(entry[0] is incoming for entry in entries):
                continue
            entries[:] = [entry for entry in entries if entry[0] is not incoming]
            self._spare_totals[tree] = self._spare_totals.get(tree, 0) - self._spares.pop(
                incoming, 0
            )
            if entries:
                self._report_spare(tree)
            else:
                del self._incoming[tree]
                self._spare_totals.pop(tree, None)
                self._turns.pop(tree, None)
                self._membership.forget_spare(tree)
                self._membership.takes(tree, REQUEST, False)
        queued, taken = incoming.take_every()
        for request in queued:
            self._answer(request, RETRY, b"the member stopped serving")
        for request in taken:
            request._answered = True
            if request._started:  # maybe partly handled: never twice
                failure = encode_failure("the member stopped before answering")
                self._answer(request, REMOTE_ERROR, failure)
            else:
                self._answer(request, RETRY, b"the member stopped serving")

    def _pick(self, tree: int, entries: list[tuple[IncomingRequests, int]]) -> IncomingRequests:
        """The next receiver in turn with room (several receive one cluster's
        requests, e.g. relay clients): amortized O(1) while most have room."""
        start = self._turns.get(tree, 0)
        count = len(entries)
        for step in range(count):
            index = (start + step) % count
            incoming = entries[index][0]
            if self._spares.get(incoming, 0) > 0:
                self._turns[tree] = index + 1
                return incoming
        return max(entries, key=_spare)[0]  # all full: the least full queues it

    def request_received(self, delivery: AnycastDelivery) -> None:
        """A request for this node's members, through the cluster's tree."""
        body = decode_body(delivery)
        self._arrived(
            delivery.tree,
            delivery.origin,
            delivery.address,
            delivery.tag,
            body.timeout_ms,
            body.data,
        )

    def local_room(self, tree: int) -> int:
        """Requests this node's members of ``tree`` can take now (0: none serve it)."""
        return self._spare_totals.get(tree, 0) if tree in self._incoming else 0

    def local_request(self, tree: int, request_id: bytes, timeout_ms: int, data: bytes) -> None:
        """A request of this node's own for its own members (see Requester)."""
        self._arrived(tree, self._port.id, "", request_id, timeout_ms, data)

    def direct_received(self, origin: int, frame: RequestDirect, arrived_at: float) -> None:
        """A request sent straight to this node by ``origin`` (over its link),
        read at trio time ``arrived_at`` (its time left counts from then: the
        requests of one read share a deadline)."""
        tree = from_bytes(frame.tree)
        self._arrived(tree, origin, "", frame.request_id, frame.timeout_ms, frame.data, arrived_at)

    def _arrived(
        self,
        tree: int,
        origin: int,
        address: str,
        request_id: bytes,
        timeout_ms: int,
        data: bytes,
        arrived_at: float | None = None,
    ) -> None:
        """A request for this node's members: to its receiver, or, when several
        receive this cluster, to the next in turn with room (or back, RETRY, if
        none takes it any more)."""
        port = self._port
        entries = self._incoming.get(tree)
        if not entries:
            message = b"the member is not serving requests"
            self._send_back(origin, address, RequestReply(request_id, RETRY, message))
            return
        incoming = entries[0][0] if len(entries) == 1 else self._pick(tree, entries)
        self.received += 1
        # The requester of a direct request watches the link it came on: it
        # stays up until the answer (else its idle timeout could fail the request).
        linked = not address and origin != port.id
        if linked:
            port.hold(origin)
        if arrived_at is None:
            arrived_at = trio.current_time()
        deadline = arrived_at + timeout_ms / 1000
        totals = self._spare_totals

        def answer(handled: Request, status: int | None, data: bytes) -> None:
            incoming._answered(handled)
            if status is not None:
                # An answer says our room (see RequestReply.room).
                room = 1 + max(0, totals.get(tree, 0)) if status <= REMOTE_ERROR else 0
                reply = RequestReply(handled.request_id, status, data, min(room, 2**32 - 1))
                self._send_back(origin, address, reply)
                if status == REPLY:
                    self.replied += 1
            if handled._noticed:
                port.release(origin)
            if linked:
                port.release(origin)

        arrived = Request(data, deadline, request_id, origin, answer)
        arrived._address = address
        if not incoming._push(arrived):
            if linked:
                port.release(origin)
            self.refused += 1
            full = b"the member's request queue is full"
            self._send_back(origin, address, RequestReply(request_id, OVERLOADED, full))
        elif origin != port.id:
            if not self._unnoticed:
                self._arrivals.unpark()
            self._unnoticed.append((trio.current_time(), arrived))

    async def run_notices(self, spawn: Callable[..., None]) -> None:
        """Tell each requester whose request this node has held for
        HELD_NOTICE_AFTER unanswered that it holds it, over a link to it (dialled
        if need be), so that the requester sees it if this node dies. Run until
        cancelled; ``spawn`` starts a task in the node's nursery."""
        self._spawn = spawn
        unnoticed = self._unnoticed
        while True:
            while not unnoticed:
                await self._arrivals.park()
            # A sweep every half period while requests are held, not a wake-up
            # per request: under load this task costs next to nothing.
            await trio.sleep(HELD_NOTICE_AFTER / 2)
            now = trio.current_time()
            while unnoticed and (
                unnoticed[0][1].answered or unnoticed[0][0] + HELD_NOTICE_AFTER <= now
            ):
                request = unnoticed.popleft()[1]
                if not request.answered:
                    spawn(self._notice, request)

    async def _notice(self, request: Request) -> None:
        port = self._port
        link = port.peer_link(request.requester)
        if link is None:
            with trio.move_on_after(HELD_NOTICE_AFTER * 20), contextlib.suppress(OSError):
                link = await port.connect_peer(request.requester, request._address)
        if link is not None and not request.answered:
            # Still queued (not handed out): say so; it is then claimed before it
            # is handed out (see IncomingRequests.receive_nowait).
            queued = not request._handed
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                status = QUEUED if queued else HELD
                link.send_control_nowait(RequestReply(request.request_id, status, b""))
                request._queued_notice = queued
                request._noticed = True
                port.hold(request.requester)  # the link the requester watches stays up
                self.notices_sent += 1

    def _claim(self, request: Request, incoming: IncomingRequests) -> None:
        if self._spawn is None:  # (notices run whenever requests are served)
            incoming._claimed(request, True)
            return
        self._spawn(self._run_claim, request, incoming)

    async def _run_claim(self, request: Request, incoming: IncomingRequests) -> None:
        """Ask the requester whether we may start ``request`` (it was told the
        request is queued here): GO hands it out, anything else drops it."""
        request_id = request.request_id
        answered = trio.Event()
        self._claims[request_id] = (request, incoming, answered)
        try:
            link = self._port.peer_link(request.requester)
            if link is not None and link.is_open:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    link.send_control_nowait(RequestReply(request_id, CLAIM, b""))
                    with trio.move_on_at(
                        min(request.deadline, trio.current_time() + CLAIM_TIMEOUT)
                    ):
                        await answered.wait()
        finally:
            del self._claims[request_id]
            go = request_id in self._go
            self._go.discard(request_id)
            incoming._claimed(request, go)

    def claim_answered(self, reply: RequestReply) -> None:
        """The requester answered a CLAIM (GO or GONE)."""
        waiting = self._claims.get(reply.request_id)
        if waiting is not None:
            if reply.status == GO:
                self._go.add(reply.request_id)
            waiting[2].set()

    def peer_lost(self, node: int) -> None:
        """The link to ``node`` is gone: its requests being claimed are dropped."""
        for request, _, answered in list(self._claims.values()):
            if request.requester == node:
                answered.set()

    def _answer(self, request: Request, status: int, data: bytes) -> None:
        request._answer(request, status, data)

    def _send_back(self, origin: int, address: str, reply: RequestReply) -> None:
        """Send an answer to its requester: this node's own at once, another's
        over the link to it, as it is (no work in the overlay), or else through
        the overlay."""
        port = self._port
        if origin == port.id and self.local_answer is not None:
            self.local_answer(reply)
            return
        link = port.peer_link(origin)
        if link is not None:
            try:
                link.send_nowait(reply)
                return
            except trio.WouldBlock:  # full: a small answer (retry, overloaded) goes all the same
                with contextlib.suppress(ValueError, trio.BrokenResourceError):
                    link.send_control_nowait(reply)
                    return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # going: the overlay's own way then
        port.send_to(origin, address, reply)


def decode_body(delivery: AnycastDelivery) -> RequestBody:
    """The request inside an anycast.

    Raises:
        ProtocolError: it is not one (a node of our network sent garbage).
    """
    body = request_codec.decode(delivery.payload)
    if not isinstance(body, RequestBody):
        raise ProtocolError(f"an anycast carries {type(body).__name__}, not a request")
    return body


def answer_to(port: OverlayPort, delivery: AnycastDelivery, status: int, data: bytes) -> None:
    """Answer the request (or tunnel opening) of ``delivery`` with ``status``."""
    port.send_to(delivery.origin, delivery.address, RequestReply(delivery.tag, status, data))


def _spare(entry: tuple[IncomingRequests, int]) -> int:
    incoming, limit = entry
    return limit - incoming.in_flight - len(incoming)


def _unsendable(result: object, exc: Exception) -> str:
    if type(result) is not bytes:
        return f"the handler returned {type(result).__name__}, not bytes"
    return f"the handler's reply is too large: {exc}"


class _HandlerPool:
    """serve()'s workers: up to ``limit`` tasks, each taking the next request and
    running the handler on it, then the next, without a task or a checkpoint
    per request (a handler that does not wait answers a whole batch of requests
    in one scheduler turn).

    A request that arrives wakes a free worker, or starts one (up to ``limit``)
    when none is free; a worker that takes a request while more wait wakes
    another before it runs the handler, so that a handler that waits holds up
    nothing (one more worker per scheduler turn while requests queue).
    """

    def __init__(
        self,
        handler: Callable[[bytes], Awaitable[bytes]],
        incoming: IncomingRequests,
        limit: int,
        nursery: trio.Nursery,
    ) -> None:
        self._handler = handler
        self._incoming = incoming
        self._limit = limit
        self._nursery = nursery
        self._free = trio.lowlevel.ParkingLot()  # workers with nothing to do
        self._waking = 0  # workers woken or started that have not taken a request yet
        self._workers = 0
        self._closed = False

    def close(self) -> None:
        """Start no more workers (serve() is ending: its nursery takes no new task)."""
        self._closed = True

    def wake(self) -> None:
        """A request can be taken: see that a worker will look."""
        if self._waking or self._closed:
            return  # one is on its way: it takes this one too, or wakes another
        if self._free.unpark():
            self._waking += 1
        elif self._workers < self._limit:
            self._workers += 1
            self._waking += 1
            self._nursery.start_soon(self._work)

    async def _work(self) -> None:
        self._waking -= 1
        while True:
            # One cancel scope per worker, not per request: each handler runs
            # under it with the scope's deadline moved to its request's (what
            # the handler's own requests inherit). A handler cancelled at its
            # deadline ends the scope; the worker goes on under a new one.
            with trio.CancelScope() as scope:
                await self._take_requests(scope)
                return

    async def _take_requests(self, scope: trio.CancelScope) -> None:
        incoming, handler = self._incoming, self._handler
        handled = 0
        while True:
            if self._closed:
                return
            # serve() stops (or this scope's last deadline passed): what waits
            # goes back, never half-started.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                request = incoming.receive_nowait()
            except trio.WouldBlock:
                if incoming.waiting:  # (it started a claim: others wait behind it)
                    self.wake()
                # (The last request's deadline stays: if it passes while this
                # worker waits, the worker goes on under a new scope.)
                await self._free.park()  # (cancelled: it was not woken)
                self._waking -= 1
                continue
            except trio.ClosedResourceError:
                return
            if incoming.waiting:
                self.wake()  # more wait: another worker takes them if this handler waits
            if scope.deadline != request.deadline:  # (a batch often shares one)
                scope.deadline = request.deadline  # late work is dropped
            await _handle(handler, request)
            handled += 1
            if handled % _BATCH == 0:
                await trio.lowlevel.checkpoint()  # (a handler that never waits)


#: A serve() worker lets other tasks run at least once per this many requests.
_BATCH: Final = 64


async def _handle(handler: Callable[[bytes], Awaitable[bytes]], request: Request) -> None:
    """Run ``handler`` on one request and answer it, whatever the handler does
    (under the worker's scope, whose deadline is the request's)."""
    try:
        try:
            result = await handler(request.data)
        except Exception as exc:  # the handler's failure goes to the requester
            request.fail_nowait(str(exc), type(exc).__name__)
        else:
            try:
                request.reply_nowait(result)
            except (TypeError, MessageTooLargeError) as exc:  # not a reply we can send
                request.fail_nowait(_unsendable(result, exc), type(exc).__name__)
    finally:
        if not request._answered and request.expired:  # its requester stopped waiting
            request._drop()  # its place among the member's requests is free again
        # (Else serve() is stopping: it answers what its handlers left.)

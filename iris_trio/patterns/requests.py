"""Request/reply: the requesting side (:class:`Requester`, whose call rules
tunnel openings share), the member side (:class:`Responder`, incoming requests
and their answers) and the encoding of failures.

A request goes to one member of a cluster, chosen by the cluster's tree by spare
capacity; it is answered once: a reply, a typed error, or its timeout. A member
that did not handle it answers "retry" and the requester sends it again, which
cannot run it twice.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from ..errors import (
    MessageTooLargeError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestLostError,
    RequestTimeoutError,
)
from ..overlay.ids import from_bytes, name_id, to_bytes
from ..overlay.port import OverlayPort
from ..overlay.trees import EMPTY, LOST, NONE_TAKES_IT, AnycastDelivery, BounceDelivery
from ..wire.frames import FrameCodec
from .limits import DEFAULT_REQUEST_TIMEOUT, check_message
from .membership import CLUSTER, REQUEST, Membership, wait_in_tree
from .queue import BoundedQueue, Overflow
from .request_frames import RequestBody, RequestDirect, RequestReply

__all__ = [
    "MAX_QUEUED_BYTES",
    "IncomingRequests",
    "PendingCall",
    "Request",
    "Requester",
    "Responder",
    "decode_failure",
    "encode_failure",
]

#: Pause before sending again a request a member gave back unhandled.
_RETRY_PAUSE: Final = 0.02
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
#: A requester sends a request straight to a member it has a link to and heard
#: from (in an answer carrying its room) at most this long ago...
DIRECT_FRESH: Final = 1.0
#: ... except one request in this many, which goes through the cluster's tree:
#: so the requester meets members it does not know yet, and the tree's load
#: balancing keeps the final say ...
DIRECT_EXPLORE: Final = 8
#: ... and at most one each this many seconds (per cluster): under load the
#: tree, several times dearer per request, carries a small share; but not
#: while members the requester has no link to answer (through the tree).
DIRECT_EXPLORE_INTERVAL: Final = 0.01
#: A member's spare capacity goes to its trees at most once each this many
#: seconds (a quarter of the trees' own ``report_interval``): not a task
#: switch per request when requests come one at a time.
REPORT_PAUSE: Final = 0.005
#: Members remembered per cluster for direct requests (the latest heard).
DIRECT_MEMBERS: Final = 32
#: What each kind of anycast is, for "no member takes ..." errors.
_KIND_NAMES: Final = {0: "requests", 1: "tunnels"}
_codec = FrameCodec()

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


# ----------------------------------------------------------------- requesting


class PendingCall:
    """A request (or tunnel opening) waiting for its answer.

    Attributes:
        kind: REQUEST or TUNNEL (what the tree anycasts it to).
        settled: True once the answer is in (see :meth:`settle`).
        status / data: the answer, once settled.
        result: what the pattern that made the call attaches (a tunnel).
    """

    __slots__ = (
        "_waiter",
        "data",
        "finished",
        "kind",
        "member",
        "result",
        "settled",
        "status",
        "stopped",
        "timed_out",
        "tree",
        "window",
    )

    def __init__(self, kind: int = REQUEST, window: int = 0) -> None:
        self.settled = False
        self._waiter: trio.lowlevel.Task | None = None
        self.status = REPLY
        self.data = b""
        self.kind = kind
        self.window = window
        self.result: object = None
        self.tree = 0
        self.member: _Member | None = None  # sent straight to it (see RequestDirect)
        self.timed_out = False  # the requester's own timeout passed
        self.stopped = False  # the node stopped while it waited
        self.finished = False  # the caller stopped waiting (answered, or not)

    def settle(self, status: int, data: bytes = b"") -> None:
        """Set the answer (the first one counts) and wake the caller."""
        if not self.settled:
            self.settled = True
            self.status, self.data = status, data
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                trio.lowlevel.reschedule(waiter)

    async def wait(self) -> None:
        """Wait until settled (a checkpoint, as trio.Event.wait; no event and
        parking lot per request)."""
        if self.settled:
            await trio.lowlevel.checkpoint()
            return
        assert self._waiter is None, "one task waits for a call"
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None  # cancelled: nothing wakes it any more
        return trio.lowlevel.Abort.SUCCEEDED


class _Member:
    """A member a requester can send requests to directly (see RequestDirect)."""

    __slots__ = ("heard_at", "node", "room", "since")

    def __init__(self, node: int) -> None:
        self.node = node
        self.room = 0  # its spare capacity, as its last answer said
        self.heard_at = -math.inf
        # Requests we sent it since that answer (those before, it had counted).
        self.since = 0


class _Exploring:
    """Per cluster tree: how the requester's requests share out between the
    tree and direct sends (see Requester._send_direct)."""

    __slots__ = ("at", "routed_at", "since")

    def __init__(self, now: float) -> None:
        self.since = 0  # direct requests since the last through the tree
        self.at = now  # when that was
        # When a member last answered without a link between us (it cannot be
        # sent to directly: the tree is its only way in).
        self.routed_at = -math.inf


class Requester:
    """The requesting side: requests and the opening of tunnels, under one set of
    deadline and retry rules (see :meth:`call`).

    A request goes through the cluster's tree, which picks a member by spare
    capacity, or, when this node has a link to members it heard from a moment
    ago (their answers carry their room), straight to one of them, picked the
    same way (see :class:`RequestDirect`): one hop, and no work at the tree's
    root. One request in ``DIRECT_EXPLORE``, at most one each
    ``DIRECT_EXPLORE_INTERVAL``, still takes the tree.
    """

    def __init__(self, port: OverlayPort) -> None:
        self._port = port
        self._pending: dict[bytes, PendingCall] = {}
        # The member that said it holds a request (by request id), and the
        # requests each such member holds: they fail at once if it goes.
        self._holder_of: dict[bytes, int] = {}
        self._held_by: dict[int, set[bytes]] = {}
        # Request ids: a random prefix per node, then a counter (unique, and
        # cheaper than 16 random bytes per request).
        self._id_prefix = os.urandom(8)
        self._ids = itertools.count()
        # Requests a member said it holds queued, not started: sent again if it goes.
        self._queued: set[bytes] = set()
        self.sent = self.answered = self.failed = 0
        #: Requests sent again because the member that held them queued went away.
        self.resent = 0
        #: Requests sent straight to a member (see RequestDirect).
        self.direct = 0
        # Per cluster tree, the members this node may send requests to directly.
        self._members: dict[int, dict[int, _Member]] = {}
        self._names: dict[str, int] = {}  # cluster -> tree id (a hash: cached)
        self._rng = random.Random()
        self._exploring: dict[int, _Exploring] = {}
        # Calls whose own timeout binds, by deadline (see run_timeouts): one
        # task times them all out, instead of a cancel scope per request.
        self._expiries: list[tuple[float, int, PendingCall]] = []
        self._expiry_order = itertools.count()
        self._expiries_kept = 0  # entries left by the last clean-up
        self._sweeper = trio.lowlevel.ParkingLot()
        self._sweep_at = math.inf
        self._sweeping = False
        #: This node's own members: their room in a tree, and how to hand them
        #: a request (set by the node; see Responder.local_room / local_request).
        self.local_room: Callable[[int], int] = _no_room
        self.local_request: Callable[[int, bytes, int, bytes], None] | None = None
        self._local: _Member | None = None

    @property
    def pending_requests(self) -> int:
        """Requests (not tunnel openings) waiting for their answer."""
        return sum(1 for call in self._pending.values() if call.kind == REQUEST)

    def pending(self, request_id: bytes) -> PendingCall | None:
        """The call waiting under ``request_id``, if any."""
        return self._pending.get(request_id)

    async def request(self, cluster: str, data: bytes, timeout: float | None) -> bytes:
        """Send ``data`` to one member of ``cluster``; its reply (see Node.request)."""
        check_message(data)
        self.sent += 1
        try:
            call = await self.call(cluster, data, timeout, PendingCall())
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):  # abandoned is not failed
                self.failed += 1
            raise
        self.answered += 1
        return call.data

    async def call(
        self, cluster: str, data: bytes, timeout: float | None, call: PendingCall
    ) -> PendingCall:
        """Send a request (or a tunnel opening) and wait for its answer.

        The deadline is the caller's cancel scope or ``timeout``, whichever is
        earlier (30 s with neither); the time left travels with the request. A
        node that has not joined the overlay yet waits for it first, within the
        deadline. Raises the answer's error, if it is one.
        """
        now = trio.current_time()
        scope_deadline = trio.current_effective_deadline()
        own = now + (DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout)
        deadline = min(scope_deadline, own)
        if deadline <= now:
            await trio.lowlevel.checkpoint()  # the caller's scope expired: cancelled here
        try:
            if own > scope_deadline:  # the caller's scope binds: let it cancel us
                await self._exchange(cluster, data, deadline, call, now)
            elif self._sweeping:  # our timeout binds, and run_timeouts keeps it
                self._expire_at(own, call)
                await self._exchange(cluster, data, deadline, call, now, expiring=True)
            else:  # our timeout binds: a scope of its own keeps it
                with trio.move_on_at(own) as scope:
                    await self._exchange(cluster, data, deadline, call, now)
                call.timed_out = scope.cancelled_caught
        finally:
            call.finished = True
        if own <= scope_deadline and call.status != REPLY and trio.current_time() >= own:
            call.timed_out = True  # a failure at the deadline (e.g. "too late") is a timeout
        if call.stopped:
            raise trio.ClosedResourceError("the node has stopped")
        if call.timed_out:
            raise RequestTimeoutError(f"no answer from cluster {cluster!r} in time")
        if call.status == REPLY:
            return call
        if call.status == NO_RESPONDERS:
            why = call.data.decode("utf-8", "replace") if call.data else "no member"
            raise NoRespondersError(f"cluster {cluster!r}: {why}")
        if call.status == LOST_ON_WAY:
            detail = call.data.decode("utf-8", "replace")
            raise RequestLostError(
                f"the request to cluster {cluster!r} was lost ({detail}); it may have run"
            )
        if call.status == OVERLOADED:
            message = call.data.decode("utf-8", "replace")
            raise RemoteError(f"the member was overloaded: {message}")
        type_name, message = decode_failure(call.data)
        raise RemoteError(message, type_name)

    def _expire_at(self, when: float, call: PendingCall) -> None:
        expiries = self._expiries
        if len(expiries) > 2 * self._expiries_kept + 64:  # mostly calls long finished
            expiries[:] = [entry for entry in expiries if not entry[2].finished]
            heapq.heapify(expiries)
            self._expiries_kept = len(expiries)
        heapq.heappush(expiries, (when, next(self._expiry_order), call))
        if when < self._sweep_at:
            self._sweeper.unpark()

    async def run_timeouts(self) -> None:
        """Time out the calls whose own timeout binds, each at its deadline (one
        task and one cancel scope for all, not one per request). Run until
        cancelled; calls made while it does not run take a scope of their own."""
        expiries = self._expiries
        self._sweeping = True
        try:
            while True:
                now = trio.current_time()
                while expiries and (expiries[0][0] <= now or expiries[0][2].finished):
                    call = heapq.heappop(expiries)[2]
                    # (A reply that came in this turn, before its caller ran, counts.)
                    if not call.finished and (not call.settled or call.status != REPLY):
                        call.timed_out = True
                        call.settle(TIMED_OUT)  # (a call waiting to send again looks)
                self._sweep_at = expiries[0][0] if expiries else math.inf
                with trio.CancelScope(deadline=self._sweep_at):
                    await self._sweeper.park()
        finally:
            self._sweeping = False
            self._sweep_at = math.inf
            for _, _, call in expiries:  # the node is stopping: nothing will answer
                if not call.finished and (not call.settled or call.status != REPLY):
                    call.stopped = True
                    call.settle(STOPPED)
            expiries.clear()

    async def _exchange(
        self,
        cluster: str,
        data: bytes,
        deadline: float,
        call: PendingCall,
        now: float,
        *,
        expiring: bool = False,
    ) -> None:
        """Send until a member takes the request: one that did not handle it (it was
        leaving, or not serving) answers RETRY, and sending again cannot duplicate.
        ``now``: the trio time the call began; ``expiring``: run_timeouts ends
        the call at ``deadline`` (it is not cancelled)."""
        port = self._port
        fresh = port.ready  # ``now`` is still the time (no wait, no retry yet)
        if not fresh:
            if expiring:
                with trio.move_on_at(deadline):
                    await port.wait_joined()
                if not port.ready:
                    call.timed_out = True
                    return
            else:
                await port.wait_joined()
        tree = self._names.get(cluster)
        if tree is None:
            if len(self._names) >= 1024:
                self._names.clear()
            tree = self._names[cluster] = name_id(CLUSTER, cluster)
        call.tree = tree
        while not (call.timed_out or call.stopped):
            request_id = self._id_prefix + next(self._ids).to_bytes(8, "big")
            call.settled = False
            self._pending[request_id] = call
            member = None
            try:
                if not fresh:
                    now = trio.current_time()
                fresh = False
                milliseconds = min(2**32 - 1, max(1, math.ceil((deadline - now) * 1000)))
                if call.kind == REQUEST:
                    member = self._send_direct(tree, request_id, milliseconds, data, now)
                call.member = member
                if member is None:
                    body = _codec.encode(RequestBody(milliseconds, data))
                    port.anycast(tree, call.kind, request_id, body)
                await call.wait()
            finally:
                del self._pending[request_id]
                self._unhold(request_id)
            if call.status != RETRY:
                return
            if member is not None:  # it does not serve the cluster (any more)
                self._forget_member(tree, member.node)
                continue  # through the tree at once: nothing ran
            await trio.sleep(_RETRY_PAUSE)

    def _send_direct(
        self, tree: int, request_id: bytes, milliseconds: int, data: bytes, now: float
    ) -> _Member | None:
        """Send the request straight to a member of ``tree`` picked by its room
        (less what we already sent it), if we know one; the member, or None.
        ``now``: the trio time."""
        members = self._members.get(tree)
        local = self.local_room(tree) if self.local_request is not None else 0
        if not members and local <= 0:
            return None
        exploring = self._explore_state(tree, now)
        exploring.since += 1
        if exploring.since >= DIRECT_EXPLORE and (
            now - exploring.at >= DIRECT_EXPLORE_INTERVAL
            # Members we have no link to answered lately: they get requests
            # through the tree only, so it keeps its one in DIRECT_EXPLORE.
            or now - exploring.routed_at < DIRECT_FRESH
        ):
            exploring.since, exploring.at = 0, now
            return None
        total = 0
        candidates: list[tuple[int, _Member]] = []
        if local > 0:  # this node's own members: their room is known exactly
            if self._local is None:
                self._local = _Member(self._port.id)
            total += local
            candidates.append((local, self._local))
        if members:
            stale = now - DIRECT_FRESH
            for member in members.values():
                room = member.room - member.since
                if room > 0 and member.heard_at >= stale:
                    total += room
                    candidates.append((room, member))
        if not candidates:
            return None
        chosen = candidates[-1][1]
        if len(candidates) > 1:
            point = self._rng.random() * total
            for room, member in candidates:
                point -= room
                if point < 0:
                    chosen = member
                    break
        if chosen is self._local:
            assert self.local_request is not None
            self.local_request(tree, request_id, milliseconds, data)
            self.direct += 1
            return chosen
        link = self._port.peer_link(chosen.node)
        if link is None or not link.is_open:
            self._forget_member(tree, chosen.node)
            return None
        frame = RequestDirect(to_bytes(tree), request_id, milliseconds, data)
        try:
            link.send_nowait(frame)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return None  # its link is full or going: the tree takes it
        chosen.since += 1
        self.direct += 1
        self._watch(request_id, chosen.node)  # it holds it from now on
        return chosen

    def _explore_state(self, tree: int, now: float) -> _Exploring:
        exploring = self._exploring.get(tree)
        if exploring is None:
            if len(self._exploring) >= 1024:  # (a node asking very many clusters)
                self._exploring.clear()
            exploring = self._exploring[tree] = _Exploring(now)
        return exploring

    def _heard_from(self, call: PendingCall, node: int, room: int, at: float | None) -> None:
        """The member ``node`` answered over its link (at trio time ``at``, if
        known), saying its room."""
        members = self._members.get(call.tree)
        if members is None:
            if len(self._members) >= 1024:  # (a node asking very many clusters)
                self._members.clear()
            members = self._members[call.tree] = {}
        member = members.get(node)
        if member is None:
            if len(members) >= DIRECT_MEMBERS:  # forget the one heard from longest ago
                del members[min(members.values(), key=_heard_at).node]
            member = members[node] = _Member(node)
        member.room = room - 1
        member.since = 0
        member.heard_at = trio.current_time() if at is None else at

    def _forget_member(self, tree: int, node: int) -> None:
        members = self._members.get(tree)
        if members is not None and members.pop(node, None) is not None and not members:
            del self._members[tree]

    def reply_received(
        self,
        reply: RequestReply,
        holder: int | None = None,
        heard_at: float | None = None,
        *,
        local: bool = False,
    ) -> None:
        """An answer arrived (``holder``: the peer whose link it came on, if any,
        read at trio time ``heard_at``; ``local``: from this node's own member):
        to the call waiting for it, if any still is. A HELD notice is not an
        answer: from then on the call fails at once if that member goes."""
        request_id, status = reply.request_id, reply.status
        call = self._pending.get(request_id)
        if status == CLAIM:
            if holder is not None:  # (a claim comes over a link, never routed)
                go = call is not None and not call.settled
                if go:
                    self._queued.discard(request_id)  # it may run from now on
                    self._watch(request_id, holder)
                self._port.send_to(holder, "", RequestReply(request_id, GO if go else GONE, b""))
            return
        if call is None:
            return
        if status not in (HELD, QUEUED):
            if reply.room and call.kind == REQUEST and not local:
                if holder is not None:
                    self._heard_from(call, holder, reply.room, heard_at)
                else:  # a member answered without a link between us
                    now = trio.current_time()
                    self._explore_state(call.tree, now).routed_at = now
            call.settle(status, reply.data)
        elif holder is not None:
            self._watch(request_id, holder)
            if status == QUEUED:
                self._queued.add(request_id)

    def _watch(self, request_id: bytes, holder: int) -> None:
        if request_id not in self._holder_of:
            self._holder_of[request_id] = holder
            self._held_by.setdefault(holder, set()).add(request_id)
            self._port.hold(holder)  # the link we watch stays up

    def _unhold(self, request_id: bytes) -> None:
        self._queued.discard(request_id)
        holder = self._holder_of.pop(request_id, None)
        if holder is not None:
            held = self._held_by[holder]
            held.discard(request_id)
            if not held:
                del self._held_by[holder]
            self._port.release(holder)

    def peer_lost(self, node: int) -> None:
        """The link to ``node`` is gone: the requests it held fail at once (the
        member left or died; they may have run, so they are not sent again),
        except those it held queued and never claimed: they surely did not
        start, and go to another member (a late claim for them is refused)."""
        for tree in [tree for tree, members in self._members.items() if node in members]:
            self._forget_member(tree, node)
        for request_id in list(self._held_by.get(node, ())):
            call = self._pending.get(request_id)
            if call is None:
                continue
            if request_id in self._queued:
                self.resent += 1
                call.settle(RETRY)
            else:
                call.settle(LOST_ON_WAY, b"the member holding it went away")

    def bounce_received(self, bounce: BounceDelivery) -> None:
        """A request came back from the tree unanswered: nobody takes it, or
        send it again."""
        call = self._pending.get(bounce.tag)
        if call is None:
            return
        if bounce.reason == LOST:
            call.settle(LOST_ON_WAY, bounce.detail.encode())
            return
        if bounce.reason != EMPTY:
            call.settle(RETRY)
            return
        why = bounce.detail
        if why == NONE_TAKES_IT:
            why = f"no member takes {_KIND_NAMES.get(call.kind, 'it')}"
        call.settle(NO_RESPONDERS, why.encode())


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
    body = _codec.decode(delivery.payload)
    if not isinstance(body, RequestBody):
        raise ProtocolError(f"an anycast carries {type(body).__name__}, not a request")
    return body


def answer_to(port: OverlayPort, delivery: AnycastDelivery, status: int, data: bytes) -> None:
    """Answer the request (or tunnel opening) of ``delivery`` with ``status``."""
    port.send_to(delivery.origin, delivery.address, RequestReply(delivery.tag, status, data))


def _no_room(tree: int) -> int:
    return 0


def _heard_at(member: _Member) -> float:
    return member.heard_at


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

"""Request/reply, the requesting side: :class:`Requester` sends requests (and
tunnel openings, which share its call rules) through the cluster's tree or
straight to a member it knows, and waits for their answers
(:class:`PendingCall`).

A request goes to one member of a cluster, chosen by spare capacity; it is
answered once: a reply, a typed error, or its timeout. A member that did not
handle it answers "retry" and the requester sends it again, which cannot run it
twice; one that may have run it and goes away fails it (RequestLostError).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
from collections.abc import Callable
from typing import Final

import trio

from ..errors import (
    NoRespondersError,
    RemoteError,
    RequestLostError,
    RequestTimeoutError,
)
from ..overlay.ids import name_id, to_bytes
from ..overlay.port import OverlayPort
from ..overlay.trees import EMPTY, LOST, NONE_TAKES_IT, BounceDelivery
from .limits import DEFAULT_REQUEST_TIMEOUT, check_message
from .membership import CLUSTER, REQUEST
from .request_frames import RequestBody, RequestDirect, RequestReply
from .requests import (
    CLAIM,
    GO,
    GONE,
    HELD,
    LOST_ON_WAY,
    NO_RESPONDERS,
    OVERLOADED,
    QUEUED,
    REPLY,
    RETRY,
    STOPPED,
    TIMED_OUT,
    decode_failure,
    request_codec,
)

__all__ = ["DIRECT_EXPLORE", "DIRECT_EXPLORE_INTERVAL", "DIRECT_FRESH", "PendingCall", "Requester"]

#: Pause before sending again a request a member gave back unhandled.
_RETRY_PAUSE: Final = 0.02
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
#: Members remembered per cluster for direct requests (the latest heard).
DIRECT_MEMBERS: Final = 32
#: What each kind of anycast is, for "no member takes ..." errors.
_KIND_NAMES: Final = {0: "requests", 1: "tunnels"}


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
                    body = request_codec.encode(RequestBody(milliseconds, data))
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


def _no_room(tree: int) -> int:
    return 0


def _heard_at(member: _Member) -> float:
    return member.heard_at

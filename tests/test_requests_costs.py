"""The cheaper request path keeps its promises, on the virtual clock: a serve()
worker reuses one cancel scope yet runs each handler under its own request's
deadline; a call waits without an event; the tree carries a small share of the
requests under load, but its one in eight while members the requester has no
link to answer; frames whose class must run its own code are built by it."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from iris_trio.patterns.request_frames import RequestDirect, RequestReply
from iris_trio.patterns.requester import (
    DIRECT_EXPLORE,
    DIRECT_EXPLORE_INTERVAL,
    PendingCall,
    Requester,
)
from iris_trio.patterns.requests import REPLY, IncomingRequests, Request, _HandlerPool
from iris_trio.wire._codegen import compile_decoder
from iris_trio.wire.fields import UInt
from iris_trio.wire.frames import FrameCodec

# ---------------------------------------------------------------- the workers


@pytest.mark.parametrize("overrun", ["without a checkpoint", "swallowing Cancelled"])
async def test_a_worker_past_one_deadline_runs_the_next_request_under_its_own(
    overrun: str, autojump_clock: trio.testing.MockClock
) -> None:
    """One worker (limit 1): the first handler overruns its deadline (it never
    checks, or it catches its cancellation and returns); the request queued
    behind it still runs to its end, under its own, later deadline."""
    answered: dict[bytes, int | None] = {}
    deadlines: dict[bytes, float] = {}
    incoming = IncomingRequests(lambda: None, lambda _: None)

    def answer(request: Request, status: int | None, data: bytes) -> None:
        answered[request.data] = status

    async def handler(data: bytes) -> bytes:
        deadlines[data] = trio.current_effective_deadline()
        if data == b"first":
            if overrun == "without a checkpoint":
                autojump_clock.jump(2)  # past its deadline, no checkpoint
            else:
                try:
                    await trio.sleep(5)
                except trio.Cancelled:
                    return b"late"  # swallows its cancellation
        else:
            await trio.sleep(0.5)
        return data

    async with trio.open_nursery() as nursery:
        pool = _HandlerPool(handler, incoming, 1, nursery)
        incoming.on_arrival = pool.wake
        now = trio.current_time()
        incoming._push(Request(b"first", now + 1, b"1", 0, answer))
        incoming._push(Request(b"second", now + 10, b"2", 0, answer))
        await trio.sleep(8)
        nursery.cancel_scope.cancel()
    assert answered[b"second"] == REPLY
    assert deadlines == {b"first": now + 1, b"second": now + 10}


# ------------------------------------------------------------------ the calls


async def test_a_call_settled_before_it_waits_returns_at_once() -> None:
    call = PendingCall()
    call.settle(REPLY, b"early")
    call.settle(1, b"second answer")  # the first one counts
    with trio.fail_after(1):
        await call.wait()
    assert (call.status, call.data) == (REPLY, b"early")


async def test_a_call_is_woken_by_its_answer_and_a_cancelled_wait_is_not() -> None:
    call = PendingCall()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call.wait)
        await trio.testing.wait_all_tasks_blocked()
        call.settle(REPLY, b"answer")
    assert call.settled and call.data == b"answer"

    cancelled = PendingCall()
    with trio.move_on_after(0.01) as scope:
        await cancelled.wait()
    assert scope.cancelled_caught
    cancelled.settle(REPLY, b"too late")  # nobody waits: nothing to wake, no error
    with trio.fail_after(1):
        await cancelled.wait()  # answered now: returns at once


# ------------------------------------------------ the tree's share of requests


class _Link:
    is_open = True

    def __init__(self, sent: list[RequestDirect]) -> None:
        self._sent = sent

    def send_nowait(self, frame: RequestDirect) -> None:
        self._sent.append(frame)


class _Port:
    """The overlay as a Requester sees it: joined, one link to member 7."""

    id = 1
    ready = True

    def __init__(self) -> None:
        self.direct: list[RequestDirect] = []
        self.through_tree: list[bytes] = []
        self._link = _Link(self.direct)

    def anycast(self, tree: int, kind: int, tag: bytes, payload: bytes) -> None:
        self.through_tree.append(tag)

    def peer_link(self, node: int) -> _Link | None:
        return self._link if node == 7 else None

    def hold(self, node: int) -> None:
        pass

    def release(self, node: int) -> None:
        pass


async def _answer_all(requester: Requester, port: _Port, *, routed_every: int = 0) -> None:
    """Answer every request sent so far: over the link to member 7, with room;
    with ``routed_every``, each such through the tree comes from a member
    without a link (routed: no holder)."""
    await trio.testing.wait_all_tasks_blocked()
    for frame in port.direct:
        requester.reply_received(RequestReply(frame.request_id, REPLY, b"", 1000), 7)
    for index, tag in enumerate(port.through_tree):
        routed = routed_every and index % routed_every == 0
        reply = RequestReply(tag, REPLY, b"", 1000)
        requester.reply_received(reply, None if routed else 7)
    port.direct.clear()
    port.through_tree.clear()


async def _share_through_tree(*, routed_every: int) -> tuple[int, int]:
    """Requests through the tree and in all, 64 in flight for 60 rounds, each
    answered at one instant of a clock that stands still."""
    port = _Port()
    requester = Requester(port)  # type: ignore[arg-type]
    sent = tree = 0
    async with trio.open_nursery() as nursery:
        for _ in range(60):
            for _ in range(64):
                nursery.start_soon(requester.request, "work", b"x", 10.0)
            await trio.testing.wait_all_tasks_blocked()
            sent += len(port.direct) + len(port.through_tree)
            tree += len(port.through_tree)
            await _answer_all(requester, port, routed_every=routed_every)
    return tree, sent


async def test_under_load_the_tree_takes_one_request_each_interval(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The first round goes through the tree (no member known yet); then one
    # request in DIRECT_EXPLORE would be 8 a round, but at most one each
    # DIRECT_EXPLORE_INTERVAL is none while the clock stands still.
    tree, sent = await _share_through_tree(routed_every=0)
    assert (tree, sent) == (64, 60 * 64)
    mock_clock.jump(DIRECT_EXPLORE_INTERVAL)
    tree, sent = await _share_through_tree(routed_every=0)  # (a new requester)
    assert tree == 64


async def test_members_without_a_link_keep_the_tree_share(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Half the answers through the tree come routed (their member has no link
    # to us: the tree is its only way in): the tree keeps one in DIRECT_EXPLORE.
    tree, sent = await _share_through_tree(routed_every=2)
    assert sent == 60 * 64
    assert tree >= 64 + 59 * (64 // DIRECT_EXPLORE) * 0.9


# ------------------------------------------------------------------ the frames

_POST_INIT_SEEN: list[int] = []


@dataclasses.dataclass(frozen=True, slots=True)
class _Checked:
    value: int

    def __post_init__(self) -> None:
        _POST_INIT_SEEN.append(self.value)


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class _OwnInit:
    value: int

    def __init__(self, value: int) -> None:
        object.__setattr__(self, "value", value + 100)


def test_a_frame_class_with_code_of_its_own_is_built_by_calling_it() -> None:
    assert compile_decoder(_Checked, (UInt(8),))(b"\x03", 0) == _Checked(3)
    assert _POST_INIT_SEEN == [3, 3]  # decoded, then the one compared with
    assert compile_decoder(_OwnInit, (UInt(8),))(b"\x03", 0).value == 103


def test_a_plain_frozen_frame_is_built_without_its_init() -> None:
    codec = FrameCodec()
    reply = RequestReply(b"r" * 16, REPLY, b"data", 7)
    again = codec.decode(codec.encode(reply))
    assert again == reply and hash(again) == hash(reply) and repr(again) == repr(reply)
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.room = 8  # type: ignore[misc]

"""The sans-IO overlay node alone: acknowledgements and retransmission of routed hops."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from iris_trio.overlay.config import OverlayConfig
from iris_trio.overlay.frames import Heartbeat, Route, RouteAck
from iris_trio.overlay.ids import to_bytes
from iris_trio.overlay.node import _MAX_SEEN, Connect, Deliver, OverlayNode, Send
from iris_trio.overlay.tree_frames import NodeMessage, TreeAnycast, TreeBounce
from iris_trio.overlay.trees import LOST, BounceDelivery, Handover, MessageDelivery, TreeNode
from iris_trio.patterns.request_frames import RequestReply
from iris_trio.wire.frames import FrameCodec

A_ID, B_ID = 1 << 120, 2 << 120


def linked_pair(config: OverlayConfig) -> tuple[OverlayNode, OverlayNode]:
    a = OverlayNode(A_ID, "a:1", config=config)
    b = OverlayNode(B_ID, "b:1", config=config)
    a.connected(0.0, B_ID, "b:1")
    b.connected(0.0, A_ID, "a:1")
    a.take_effects()
    b.take_effects()
    return a, b


def routes_sent(effects: Sequence[object], to: int) -> list[Route]:
    return [
        e.frame
        for e in effects
        if isinstance(e, Send) and e.node == to and isinstance(e.frame, Route)
    ]


def test_acknowledgements_ride_on_the_next_route_back_or_go_batched() -> None:
    config = OverlayConfig()
    a, b = linked_pair(config)
    a.route(0.0, B_ID, b"question")
    (question,) = routes_sent(a.take_effects(), B_ID)
    b.received(0.001, A_ID, question)
    assert [e for e in b.take_effects() if isinstance(e, Send)] == []  # the ack waits
    b.route(0.002, A_ID, b"answer")
    (answer,) = routes_sent(b.take_effects(), A_ID)
    assert answer.acks == (question.message_id,)  # ...and rides on the answer
    a.received(0.003, B_ID, answer)
    assert a.statistics().routed == 1 and not a._pending
    # Nothing to ride on: one RouteAck for all that is owed, after ack_delay.
    for number in range(3):
        a.route(0.01, B_ID, b"%d" % number)
    for route in routes_sent(a.take_effects(), B_ID):
        b.received(0.011, A_ID, route)
    b.take_effects()
    b.tick(0.011 + config.ack_delay)
    acks = [
        e.frame for e in b.take_effects() if isinstance(e, Send) and isinstance(e.frame, RouteAck)
    ]
    assert len(acks) == 1 and len(acks[0].message_ids) == 3


def test_a_live_but_slow_next_hop_keeps_its_message() -> None:
    """A hop that is heard from (heartbeats) but slow to acknowledge is retried,
    waiting longer each time, and never bypassed by delivering elsewhere."""
    config = OverlayConfig()
    a, _ = linked_pair(config)
    a.route(0.0, B_ID, b"patience")
    sends = len(routes_sent(a.take_effects(), B_ID))
    now = 0.0
    while now < 20.0:
        now += 0.1
        a.received(now, B_ID, Heartbeat())  # B is alive, just behind
        a.tick(now)
        effects = a.take_effects()
        assert not [e for e in effects if isinstance(e, Deliver)]
        sends += len(routes_sent(effects, B_ID))
    assert 2 <= sends <= 2 * config.route_attempts  # retried, with growing waits


def test_duplicate_suppression_memory_is_bounded() -> None:
    a, _ = linked_pair(OverlayConfig())
    for number in range(_MAX_SEEN + 1000):
        a._remember(number.to_bytes(16, "big"), 0.0)
    assert len(a._seen) == _MAX_SEEN


def test_a_routed_message_for_a_node_not_known_here_is_handed_over() -> None:
    """A requester that joined a moment ago may not be known on the reply's way:
    the node the reply reaches connects to the address the request carried."""
    alone = TreeNode(OverlayNode(A_ID, "a:1", config=OverlayConfig()))
    alone.send_to(0.0, B_ID, "b:1", RequestReply(b"r" * 16, 0, b"hi"))
    alone.send_to(0.0, A_ID, "a:1", RequestReply(b"s" * 16, 0, b"mine"))
    alone.send_to(0.0, A_ID, "a:1", TreeBounce(b"t", 0, "no member"))
    codec = FrameCodec()  # and one that came routed, as from another node
    routed = NodeMessage(to_bytes(A_ID), "a:1", codec.encode(RequestReply(b"u" * 16, 0, b"too")))
    alone.overlay.route(0.0, A_ID, codec.encode(routed))
    effects = alone.take_effects()
    handovers = [e for e in effects if isinstance(e, Handover)]
    assert [(h.target, h.address) for h in handovers] == [(B_ID, "b:1")]
    inner = FrameCodec().decode(handovers[0].message.frame)
    assert isinstance(inner, RequestReply) and inner.data == b"hi"
    mine = [e.frame for e in effects if isinstance(e, MessageDelivery)]
    assert mine == [RequestReply(b"s" * 16, 0, b"mine"), RequestReply(b"u" * 16, 0, b"too")]
    assert [e for e in effects if isinstance(e, BounceDelivery)] == [
        BounceDelivery(b"t", 0, "no member")
    ]


def test_an_anycast_whose_next_hop_goes_unacknowledged_is_lost_not_sent_again() -> None:
    """Requests run at most once: an anycast is retried on its hop while that hop
    is up (the hop drops copies), but once the hop is gone it may already have
    passed it on, so it is not sent another way (nor delivered here): its origin
    gets a LOST bounce. Other routed messages still take another path."""
    codec = FrameCodec()
    a, _ = linked_pair(OverlayConfig())
    trees = TreeNode(a)
    trees.anycast(0.0, B_ID, 0, b"tag", b"payload")  # B is closest to the key
    a.route(0.0, B_ID, b"plain")
    anycast, _ = routes_sent(trees.take_effects(), B_ID)
    assert codec.kind_of(anycast.payload) == TreeAnycast.KIND
    a.disconnected(0.1, B_ID)  # B goes before acknowledging either
    effects = trees.take_effects()
    assert [e for e in effects if isinstance(e, BounceDelivery)] == [
        BounceDelivery(b"tag", LOST, "a node on the way to the member went away")
    ]
    delivered = [e.route.payload for e in effects if isinstance(e, Deliver)]
    assert delivered == [b"plain"]  # A is now the closest: the plain message is its own
    assert a.statistics().rerouted == 0


def test_a_lone_node_keeps_dialling_its_seeds_with_growing_pauses() -> None:
    """A node whose seed is down (or not up yet) dials it again while it is
    alone: after 1 s, then pauses doubling (with jitter) up to 30 s; once it has
    a peer it stops. Until its seeds were tried it is not joined."""
    node = OverlayNode(A_ID, "a:1", config=OverlayConfig())
    node.start(0.0, ["seed:1"])
    assert [e for e in node.take_effects() if isinstance(e, Connect)] == [Connect("seed:1", None)]
    assert not node.check_ready(0.0)  # the seed is being dialled
    dials: list[float] = []
    now = 0.0
    while now < 120.0:
        node.connect_failed(now, "seed:1")  # every attempt fails at once
        now += 0.25
        node.tick(now)
        if any(isinstance(e, Connect) for e in node.take_effects()):
            dials.append(now)
    pauses = [later - earlier for earlier, later in itertools.pairwise([0.0, *dials])]
    assert 0.75 <= pauses[0] <= 1.5
    assert all(b >= a * 1.1 for a, b in itertools.pairwise(pauses[:5])), pauses  # growing
    assert max(pauses) <= 30 * 1.25 + 0.25
    assert node.check_ready(now)  # alone, its seed tried: an answer to trust
    node.connected(now, B_ID, "seed:1")
    node.take_effects()
    for _ in range(200):
        now += 0.25
        node.received(now, B_ID, Heartbeat())  # the peer stays alive
        node.tick(now)
        assert not [e for e in node.take_effects() if isinstance(e, Connect)]


def test_a_peer_is_judged_by_what_arrived_not_by_what_was_read() -> None:
    # This node was busy for 10 s (say, a flood of work in one turn): nothing
    # from B was read, but its link says data arrived a moment ago. B stays.
    config = OverlayConfig()
    a, _ = linked_pair(config)
    a.heard(B_ID, 9.9)
    a.tick(10.0)
    assert a.is_connected(B_ID)
    # Without such evidence, a peer silent for longer than dead_after goes.
    a.tick(10.0 + config.dead_after + 0.1)
    assert not a.is_connected(B_ID)
    a.heard(B_ID, 20.0)  # evidence about a peer no longer connected: ignored
    assert not a.is_connected(B_ID)


def test_a_node_in_thousands_of_trees_does_no_work_per_tree_between_scans() -> None:
    config = OverlayConfig()
    a, _ = linked_pair(config)
    trees = TreeNode(a)
    for tree in range(1, 3001):
        trees.join(0.0, tree << 100)
    trees.take_effects()
    trees.tick(0.0)  # a full scan
    scanned: list[int] = []
    original = trees._check_place

    def counting(tree: int, state: object) -> bool:
        scanned.append(tree)
        return original(tree, state)  # type: ignore[arg-type]

    trees._check_place = counting  # type: ignore[method-assign]
    trees.set_spare(0.001, 1 << 100, 5)
    trees.tick(0.05)  # between scans: only the tree with a deferred report
    assert len(scanned) <= 1
    trees.tick(0.3)  # the next scan: every tree
    assert len(scanned) >= 3000

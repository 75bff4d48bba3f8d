"""Cluster membership: which clusters this node is a member of, and what its
members there take (requests, tunnels), as the cluster's tree must know."""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from ..overlay.ids import name_id
from ..overlay.port import OverlayPort
from ..overlay.trees import serves_bit

__all__ = ["CLUSTER", "REQUEST", "TOPIC", "TUNNEL", "Membership", "wait_in_tree"]

log = logging.getLogger("iris_trio")

#: Name spaces of tree ids.
CLUSTER, TOPIC = "cluster", "topic"
#: Kinds of anycast a member may take.
REQUEST, TUNNEL = 0, 1
#: Longest wait for a tree just joined to reach its root (then go on regardless:
#: the tree keeps trying, and a partitioned node must not hang its user).
_LINK_WAIT: Final = 5.0


async def wait_in_tree(port: OverlayPort, tree: int, kind: int | None = None) -> None:
    """Wait until the node has joined the overlay, then (5 s at most) until the
    tree just joined reaches its root (and the root knows that this node takes
    anycasts of ``kind``, if given), so that what is sent from now on reaches
    this node."""
    if not port.ready:
        await port.wait_joined()
    with trio.move_on_after(_LINK_WAIT):
        await port.wait_linked(tree, 0 if kind is None else serves_bit(kind))


class Membership:
    """The clusters this node is a member of (each counted: several holders may
    keep one cluster joined), and per cluster tree the kinds of request its
    members take and their spare capacity.

    Args:
        port: the overlay.
        on_joined / on_left: called with a cluster's tree id as the node becomes
            a member, and as it stops being one.
    """

    def __init__(
        self,
        port: OverlayPort,
        on_joined: Callable[[int], None],
        on_left: Callable[[int], None],
    ) -> None:
        self._port = port
        self._on_joined = on_joined
        self._on_left = on_left
        self._clusters: collections.Counter[str] = collections.Counter()
        self._takes: dict[int, int] = {}  # tree -> serves bits
        self._spare: dict[int, int] = {}

    @property
    def clusters(self) -> list[str]:
        """The clusters this node is a member of."""
        return list(self._clusters)

    def enter(self, cluster: str) -> None:
        """Become (or stay) a member of ``cluster``; undo with :meth:`exit`."""
        self._clusters[cluster] += 1
        if self._clusters[cluster] == 1:
            log.info("joined cluster %r", cluster)
            tree = name_id(CLUSTER, cluster)
            self._port.join_tree(tree)
            self._on_joined(tree)

    def exit(self, cluster: str) -> None:
        """Undo one :meth:`enter`."""
        self._clusters[cluster] -= 1
        if not self._clusters[cluster]:
            log.info("left cluster %r", cluster)
            del self._clusters[cluster]
            tree = name_id(CLUSTER, cluster)
            self._on_left(tree)
            self._port.leave_tree(tree)

    @asynccontextmanager
    async def member(self, cluster: str) -> AsyncIterator[int]:
        """Be a member of ``cluster`` for the body (yields its tree id) without
        waiting for the tree: a receiver can then be in place before the tree
        hears of this member. A checkpoint."""
        await trio.lowlevel.checkpoint()
        self.enter(cluster)
        try:
            yield name_id(CLUSTER, cluster)
        finally:
            self.exit(cluster)

    def takes(self, tree: int, kind: int, taking: bool) -> None:
        """Tell the tree whether this node's members take ``kind`` now."""
        bits = self._takes.get(tree, 0)
        bits = bits | serves_bit(kind) if taking else bits & ~serves_bit(kind)
        if bits:
            self._takes[tree] = bits
        else:
            self._takes.pop(tree, None)
        self._port.set_spare(tree, self._spare.get(tree, 0), bits)

    def report_spare(self, tree: int, spare: int) -> None:
        """Tell the tree how many more requests this node's members take now."""
        self._spare[tree] = spare
        self._port.set_spare(tree, spare)

    def forget_spare(self, tree: int) -> None:
        """This node's members of ``tree`` take no more requests."""
        self._spare.pop(tree, None)

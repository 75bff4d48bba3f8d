"""The Pastry leaf set: the closest live nodes on each side of this node."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .ids import clockwise

__all__ = ["LeafSet"]


class LeafSet:
    """Up to ``size`` nodes on each side (successors clockwise, predecessors).

    Args:
        owner: this node's id.
        size: nodes kept per side (Pastry's L/2; 8 by default).
    """

    __slots__ = ("left", "owner", "right", "size")

    def __init__(self, owner: int, size: int = 8) -> None:
        self.owner = owner
        self.size = size
        #: Successors, nearest first.
        self.right: list[int] = []
        #: Predecessors, nearest first.
        self.left: list[int] = []

    def __contains__(self, node: object) -> bool:
        return node in self.right or node in self.left

    def __iter__(self) -> Iterator[int]:
        seen = set(self.right)
        yield from self.right
        yield from (node for node in self.left if node not in seen)

    def __len__(self) -> int:
        return len(set(self.right) | set(self.left))

    def _sides(self, candidates: Iterable[int]) -> tuple[list[int], list[int]]:
        owner = self.owner
        pool = {c for c in candidates if c != owner}
        right = sorted(pool, key=lambda n: clockwise(owner, n))[: self.size]
        left = sorted(pool, key=lambda n: clockwise(n, owner))[: self.size]
        return right, left

    def would_admit(self, node: int) -> bool:
        """True if ``node`` would enter the leaf set."""
        if node == self.owner or node in self:
            return False
        if len(self.right) < self.size or len(self.left) < self.size:
            return True
        return clockwise(self.owner, node) < clockwise(self.owner, self.right[-1]) or (
            clockwise(node, self.owner) < clockwise(self.left[-1], self.owner)
        )

    def add(self, node: int) -> bool:
        """Offer ``node``; return True if the leaf set changed."""
        if not self.would_admit(node):
            return False
        self.right, self.left = self._sides([*self.right, *self.left, node])
        return True

    def remove(self, node: int) -> bool:
        """Remove ``node``; return True if it was a member."""
        if node not in self:
            return False
        self.right, self.left = self._sides(n for n in [*self.right, *self.left] if n != node)
        return True

    def covers(self, key: int) -> bool:
        """True if ``key`` lies within the leaf set's range (the whole ring when the
        leaf set holds every node)."""
        if len(self) < 2 * self.size:
            return True  # both sides overlap or are short: we know the whole ring
        low, high = self.left[-1], self.right[-1]
        return clockwise(low, key) <= clockwise(low, high)

"""Tree frames (kinds 21-23)."""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob
from ..wire.frames import Frame, frame_kind

__all__ = ["TreeHeartbeat", "TreeJoin", "TreePrune"]


@frame_kind(21, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeJoin(Frame):
    """Routed towards a tree's id: every hop adopts the previous one as a child."""

    tree: bytes


@frame_kind(22, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeHeartbeat(Frame):
    """Child to parent, periodically: "I am still your child"."""

    tree: bytes


@frame_kind(23, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreePrune(Frame):
    """Child to parent: "forget me" (I have no members or children left)."""

    tree: bytes

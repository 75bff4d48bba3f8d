"""Where each publisher's events stand on one node, sans-IO.

Every event a publisher sends on a tree carries the publisher's *epoch* (a
random number drawn when its node starts) and a sequence number (from 1, one
per event). A node on the tree keeps, per tree and publisher, the ranges of
sequence numbers it has passed on (*streams*), and decides for each arriving
frame:

- **duplicate or late**: it lies within (or below) what was passed on: drop it,
  so that each publisher's events are passed on once and in order;
- **next**: it starts right after a stream's end: pass it on now;
- **after a gap**: it starts beyond every stream's end. It is *held* (not
  passed on) for up to ``hold`` seconds, opening a stream of its own:

  - frames that fill the gap arrive (they were overtaken on another path):
    they go first, then the held frames, in order, and nothing was missed;
  - frames that continue the held stream are held with it (up to 64);
  - the time is up: if the publisher's stream went on after the gap, the gap
    counts as *missed* and everything held goes on, in order. A single frame
    after a gap with nothing since goes on apart: its gap counts (and the
    ranges merge) only once a later frame continues it. So a forged or corrupt
    number, which nothing continues, is never counted and never takes the
    publisher's range: its own stream goes on unaffected.

So one forged frame with a huge number cannot discard the real publisher's
future, a frame overtaken on another path is not lost, and events stay in
order. A publisher that restarts has a new epoch, hence new streams. Streams
per publisher are bounded (the least recently used goes, with what it holds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Generic, TypeVar

__all__ = ["HOLD", "MAX_STREAMS", "PublisherStreams", "Released"]

T = TypeVar("T")

#: Most ranges kept per (tree, publisher, epoch).
MAX_STREAMS = 8
#: Most epochs kept per (tree, publisher).
MAX_EPOCHS = 4
#: Seconds a frame that opens a gap is held, waiting for what fills it.
HOLD = 0.2
#: Most frames held after one gap: beyond, the gap counts as missed at once.
HOLD_FRAMES = 64


@dataclasses.dataclass(slots=True, eq=False)
class _Stream(Generic[T]):
    start: int
    end: int
    used: int
    #: Frames held (not passed on yet) while the gap below is open.
    held: list[T] = dataclasses.field(default_factory=list)
    held_since: float = math.inf
    #: The gap below this stream, and the stream below it with its end then.
    pending_gap: int = 0
    below: _Stream[T] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Released(Generic[T]):
    """Frames to pass on now, in order, and the events of their publisher now
    known to have been missed before them."""

    frames: list[T]
    missed: int = 0


class PublisherStreams(Generic[T]):
    """Per (tree, publisher): which events were passed on (see the module docstring)."""

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold
        # (tree, publisher) -> epoch -> streams
        self._streams: dict[tuple[int, int], dict[int, list[_Stream[T]]]] = {}
        self._held: set[tuple[tuple[int, int], int, _Stream[T]]] = set()  # holding frames
        self._clock = 0
        #: Frames dropped as duplicates or late.
        self.duplicates = 0

    def accept(
        self, now: float, tree: int, publisher: int, epoch: int, first: int, count: int, frame: T
    ) -> Released[T] | None:
        """Judge ``frame``, carrying events ``first`` .. ``first + count - 1``:
        what to pass on now; None for a duplicate or late frame (dropped), and
        no frames at all while ``frame`` is held."""
        self._clock += 1
        last = first + count - 1
        key = (tree, publisher)
        epochs = self._streams.setdefault(key, {})
        streams = epochs.get(epoch)
        if streams is None:
            if len(epochs) >= MAX_EPOCHS:
                oldest = min(epochs, key=lambda e: max(s.used for s in epochs[e]))
                self._forget(key, oldest, epochs.pop(oldest))
            epochs[epoch] = [_Stream(first, last, self._clock)]
            return Released([frame])
        below: _Stream[T] | None = None
        for stream in streams:
            if first <= stream.end and last >= stream.start:
                if last <= stream.end or stream.held:
                    self.duplicates += 1  # nothing new, or overlapping what waits
                    return None
                return self._extend(key, epoch, streams, stream, last, frame)
            if stream.end < first and (below is None or stream.end > below.end):
                below = stream
        if below is None:
            self.duplicates += 1  # below everything passed on: late
            return None
        if below.end + 1 == first:
            return self._extend(key, epoch, streams, below, last, frame)
        # Streams passed on apart after a gap that this frame lands beyond are
        # the publisher's own (nothing forged is passed over by the real
        # stream): their gaps are confirmed.
        missed = 0
        for other in sorted(streams, key=lambda s: s.start):
            if other.below is not None and not other.held and other.end < first:
                missed += self._settle(key, epoch, streams, other, count_gap=True)
        below = max((s for s in streams if s.end < first), key=lambda s: s.end)
        if below.end + 1 == first:
            extended = self._extend(key, epoch, streams, below, last, frame)
            return Released(extended.frames, missed + extended.missed)
        opened = _Stream(
            first,
            last,
            self._clock,
            held=[frame],
            held_since=now,
            pending_gap=first - below.end - 1,
            below=below,
        )
        streams.append(opened)
        self._held.add((key, epoch, opened))
        out: list[T] = []
        while len(streams) > MAX_STREAMS:
            held = [s for s in streams if s.held and s is not opened]
            if held:  # too many gaps at once: the oldest held run goes on now
                early = self._release_one(key, epoch, streams, min(held, key=lambda s: s.start))
                out += early.frames
                missed += early.missed
            else:
                victim = min((s for s in streams if s is not opened), key=lambda s: s.used)
                self._remove(key, epoch, streams, victim)
        return Released(out, missed)

    def _extend(
        self,
        key: tuple[int, int],
        epoch: int,
        streams: list[_Stream[T]],
        stream: _Stream[T],
        last: int,
        frame: T,
    ) -> Released[T]:
        """``frame`` continues ``stream`` up to ``last``."""
        stream.used = self._clock
        if stream.held:  # it waits with what it holds (frames overtaken may come)
            stream.held.append(frame)
            stream.end = last
            for other in sorted(streams, key=lambda s: s.start):
                if other is not stream and other.held and other.start == stream.end + 1:
                    stream.held.extend(other.held)  # two held runs now touch: one
                    stream.end = other.end
                    self._remove(key, epoch, streams, other, heir=stream)
            if len(stream.held) < HOLD_FRAMES:
                return Released([])
            out = stream.held
            return Released(out, self._settle(key, epoch, streams, stream, count_gap=True))
        missed = 0
        if stream.below is not None:  # passed on apart after a gap, now continued
            missed = self._settle(key, epoch, streams, stream, count_gap=True)
        stream.end = last
        out = [frame]
        # The gap below a stream after a gap just filled: what it holds goes on
        # now, and nothing was missed.
        for other in sorted(streams, key=lambda s: s.start):
            if other is not stream and other.below is not None and other.start == stream.end + 1:
                out.extend(other.held)
                self._settle(key, epoch, streams, other, count_gap=False)
                stream.end = max(stream.end, other.end)
                self._remove(key, epoch, streams, other, heir=stream)
        return Released(out, missed)

    def _settle(
        self,
        key: tuple[int, int],
        epoch: int,
        streams: list[_Stream[T]],
        stream: _Stream[T],
        *,
        count_gap: bool,
    ) -> int:
        """``stream`` passes on what it held; with ``count_gap``, its gap is
        missed and it takes over the range of the stream below it."""
        self._held.discard((key, epoch, stream))
        stream.held = []
        stream.held_since = math.inf
        below = stream.below
        missed = 0
        if count_gap:
            if below is not None and below in streams:
                missed = stream.start - below.end - 1  # what never came
                stream.start = below.start
                self._remove(key, epoch, streams, below, heir=stream)
            else:
                missed = stream.pending_gap
        stream.pending_gap, stream.below = 0, None
        return missed

    def release(self, now: float) -> list[tuple[int, Released[T]]]:
        """Held frames whose time is up, per tree (see the module docstring)."""
        out: list[tuple[int, Released[T]]] = []
        # (The same sum as next_release: a clock that jumps to that deadline meets it.)
        due = [entry for entry in self._held if entry[2].held_since + self.hold <= now]
        for key, epoch, stream in sorted(due, key=lambda entry: entry[2].start):
            streams = self._streams.get(key, {}).get(epoch, [])
            if stream in streams and stream.held:
                out.append((key[0], self._release_one(key, epoch, streams, stream)))
            self._held.discard((key, epoch, stream))
        return out

    def _release_one(
        self, key: tuple[int, int], epoch: int, streams: list[_Stream[T]], stream: _Stream[T]
    ) -> Released[T]:
        """What ``stream`` holds goes on now. If the publisher went on after the
        gap (more frames, or streams beyond), the gap counts as missed; a single
        frame with nothing since goes on apart: its gap counts (and the ranges
        merge) only once a later frame continues it, so a forged number never
        takes the publisher's range."""
        frames = stream.held
        if len(frames) > 1 or any(other.start > stream.end for other in streams):
            return Released(frames, self._settle(key, epoch, streams, stream, count_gap=True))
        self._held.discard((key, epoch, stream))
        stream.held, stream.held_since = [], math.inf
        return Released(frames)

    @property
    def next_release(self) -> float:
        """When :meth:`release` has something to pass on at the earliest (inf: never)."""
        return min((entry[2].held_since for entry in self._held), default=math.inf) + self.hold

    def _remove(
        self,
        key: tuple[int, int],
        epoch: int,
        streams: list[_Stream[T]],
        stream: _Stream[T],
        *,
        heir: _Stream[T] | None = None,
    ) -> None:
        """``stream`` goes (merged into ``heir``, or evicted)."""
        streams.remove(stream)
        self._held.discard((key, epoch, stream))
        for other in streams:
            if other.below is stream:
                other.below = heir  # (evicted: its gap can no longer be told)
                if heir is None:
                    other.pending_gap = 0

    def _forget(self, key: tuple[int, int], epoch: int, streams: list[_Stream[T]]) -> None:
        for stream in streams:
            self._held.discard((key, epoch, stream))

    def forget_tree(self, tree: int) -> None:
        """Drop everything about ``tree`` (this node left it), held frames too."""
        for key in [key for key in self._streams if key[0] == tree]:
            for epoch, streams in self._streams.pop(key).items():
                self._forget(key, epoch, streams)

    def __len__(self) -> int:
        return len(self._streams)

"""Where each publisher's events stand on one node, sans-IO.

Every event a publisher sends on a tree carries the publisher's *epoch* (a
random number drawn when its node starts) and a sequence number (from 1, one
per event). A node on the tree keeps, per tree and publisher, the ranges of
sequence numbers it has passed on (*streams*), and for each arriving frame
decides:

- **duplicate or late**: every number in it lies in a range already passed on
  (a frame that came twice, or an older one overtaken on a new path): drop it,
  so each publisher's events stay in order and nobody sees one twice;
- **next**: it starts right after a stream's end: pass it on;
- **after a gap**: it starts beyond every stream's end. It is passed on and
  opens a stream of its own, and the gap counts as *missed* only once a later
  frame confirms the new stream (continues it or lands beyond it).

Why not simply "drop everything below the highest number seen": one forged or
corrupt frame with a huge sequence number would then discard the real
publisher's whole future. Here such a frame opens a stream nobody continues;
the real publisher's frames continue their own stream, and the forged gap is
never counted. A publisher that restarts has a new epoch, hence new streams:
its events are not mistaken for old ones. Streams per publisher are bounded
(the least recently used goes).
"""

from __future__ import annotations

import dataclasses

__all__ = ["MAX_STREAMS", "PublisherStreams", "Verdict"]

#: Most ranges kept per (tree, publisher, epoch).
MAX_STREAMS = 8
#: Most epochs kept per (tree, publisher).
MAX_EPOCHS = 4
#: An unconfirmed stream is given up (as forged or corrupt) once the stream
#: below it has been continued this many times without reaching it.
MAX_UNCONFIRMED = 64


@dataclasses.dataclass(slots=True, eq=False)
class _Stream:
    start: int
    end: int
    used: int
    #: The gap below this stream, counted as missed once the stream is confirmed.
    pending_gap: int = 0
    #: The stream this one continues after its gap (merged on confirmation).
    below: _Stream | None = None
    #: How often ``below`` was continued since this stream opened.
    passed_over: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one frame: ``deliver`` it or not, and how many events of
    this publisher are now known to have been missed (0 mostly)."""

    deliver: bool
    missed: int = 0


_DUPLICATE = Verdict(deliver=False)
_NEXT = Verdict(deliver=True)


class PublisherStreams:
    """Per (tree, publisher): which events were passed on (see the module docstring)."""

    def __init__(self) -> None:
        # (tree, publisher) -> epoch -> streams
        self._streams: dict[tuple[int, int], dict[int, list[_Stream]]] = {}
        self._clock = 0

    def accept(self, tree: int, publisher: int, epoch: int, first: int, count: int) -> Verdict:
        """Judge the frame carrying events ``first`` .. ``first + count - 1``."""
        self._clock += 1
        last = first + count - 1
        epochs = self._streams.setdefault((tree, publisher), {})
        streams = epochs.get(epoch)
        if streams is None:
            if len(epochs) >= MAX_EPOCHS:
                del epochs[min(epochs, key=lambda e: max(s.used for s in epochs[e]))]
            epochs[epoch] = [_Stream(first, last, self._clock)]
            return _NEXT
        below: _Stream | None = None
        for stream in streams:
            if first <= stream.end and last >= stream.start:  # overlaps what we passed on
                if last <= stream.end:
                    stream.used = self._clock
                    return _DUPLICATE
                missed = self._confirm(streams, first)
                self._extend(streams, stream, last)
                return Verdict(deliver=True, missed=missed) if missed else _NEXT
            if stream.end < first and (below is None or stream.end > below.end):
                below = stream
        missed = self._confirm(streams, first)
        if below is not None and below.end + 1 == first:
            self._extend(streams, below, last)
        else:
            gap = first - below.end - 1 if below is not None else 0
            streams.append(_Stream(first, last, self._clock, pending_gap=gap, below=below))
            if len(streams) > MAX_STREAMS:
                self._remove(streams, min(streams, key=lambda s: s.used))
        return Verdict(deliver=True, missed=missed) if missed else _NEXT

    def _extend(self, streams: list[_Stream], stream: _Stream, last: int) -> None:
        """``stream`` now ends at ``last``: streams it reached merge into it, and
        unconfirmed ones above it that it keeps passing over are given up."""
        stream.end = last
        stream.used = self._clock
        for other in list(streams):
            if other is stream:
                continue
            if stream.start < other.start <= stream.end + 1:
                stream.end = max(stream.end, other.end)  # the gap below it is filled
                self._remove(streams, other)
            elif other.below is stream:
                other.passed_over += 1
                if other.passed_over > MAX_UNCONFIRMED:
                    self._remove(streams, other)

    def _confirm(self, streams: list[_Stream], first: int) -> int:
        """Unconfirmed streams that end below ``first`` are confirmed by this
        frame: their gaps count as missed, and each merges with the stream it
        continued."""
        missed = 0
        for stream in list(streams):
            below = stream.below
            if below is None or stream.end >= first:
                continue
            missed += stream.pending_gap
            stream.pending_gap, stream.below = 0, None
            if below in streams:
                stream.start = below.start
                self._remove(streams, below)
        return missed

    @staticmethod
    def _remove(streams: list[_Stream], stream: _Stream) -> None:
        streams.remove(stream)
        for other in streams:
            if other.below is stream:
                other.below = None  # its gap can no longer be told
                other.pending_gap = 0

    def forget_tree(self, tree: int) -> None:
        """Drop everything about ``tree`` (this node left it)."""
        for key in [key for key in self._streams if key[0] == tree]:
            del self._streams[key]

    def __len__(self) -> int:
        return len(self._streams)

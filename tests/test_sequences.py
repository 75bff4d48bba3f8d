"""PublisherStreams: duplicates and late frames dropped, order kept, frames after
a gap held a moment, gaps counted as missed once confirmed, forged numbers."""

from __future__ import annotations

from iris_trio.overlay.sequences import HOLD, PublisherStreams

TREE, PUBLISHER, EPOCH = 1, 2, 3


class Feed:
    """Frames named by their first sequence number; what comes out, in order."""

    def __init__(self) -> None:
        self.streams: PublisherStreams[int] = PublisherStreams()
        self.now = 0.0
        self.out: list[int] = []
        self.missed = 0

    def __call__(self, first: int, count: int = 1, epoch: int = EPOCH) -> str:
        released = self.streams.accept(self.now, TREE, PUBLISHER, epoch, first, count, first)
        if released is None:
            return "dropped"
        self.out.extend(released.frames)
        self.missed += released.missed
        return "passed" if first in released.frames else "held"

    def wait(self, seconds: float) -> None:
        self.now += seconds
        for _, released in self.streams.release(self.now):
            self.out.extend(released.frames)
            self.missed += released.missed


def test_in_order_frames_pass_and_duplicates_do_not() -> None:
    feed = Feed()
    assert feed(1, 3) == "passed"
    assert feed(4, 2) == "passed"
    assert feed(4, 2) == "dropped"
    assert feed(1) == "dropped"
    assert feed(5, 3) == "passed"  # a new tail is passed on
    assert feed(8) == "passed"
    assert feed.out == [1, 4, 5, 8] and feed.missed == 0


def test_a_subscriber_joining_mid_stream_misses_nothing() -> None:
    feed = Feed()
    assert feed(5000) == "passed"
    assert feed(5001) == "passed"
    assert feed(4000) == "dropped"  # before it joined: late
    assert feed.missed == 0


def test_a_gap_is_held_then_counted_once_the_stream_went_on() -> None:
    feed = Feed()
    feed(1, 10)
    assert feed(21, 5) == "held"  # 11..20 missing: wait for them a moment
    assert feed(26) == "held"  # the stream goes on: held with it
    feed.wait(HOLD)
    assert feed.out == [1, 21, 26] and feed.missed == 10  # they were missed
    assert feed(15) == "dropped"  # one from the gap, too late: order is kept
    assert feed.streams.next_release == float("inf")


def test_several_frames_overtaken_on_another_path_all_go_first() -> None:
    feed = Feed()
    feed(1)
    assert feed(3) == "held"
    assert feed(5) == "held"
    assert feed(2) == "passed"  # fills the first gap: 2 and 3 go on
    assert feed(4) == "passed"  # fills the second: 4 and 5
    assert feed.out == [1, 2, 3, 4, 5] and feed.missed == 0


def test_held_runs_that_meet_go_on_together() -> None:
    feed = Feed()
    feed(1, 11)
    feed(15)
    feed(13)
    feed(14)  # 13..15 now one held run; 12 is missing
    assert feed.out == [1]
    feed(12)
    assert feed.out == [1, 12, 13, 14, 15] and feed.missed == 0
    feed2 = Feed()
    feed2(1, 11)
    feed2(15)
    feed2(13)
    feed2(14)
    feed2.wait(HOLD)  # 12 never comes
    assert feed2.out == [1, 13, 14, 15] and feed2.missed == 1


def test_frames_overtaken_on_another_path_go_first_and_nothing_is_missed() -> None:
    feed = Feed()
    feed(1, 4096)
    assert feed(4098) == "held"  # the new path is faster
    assert feed(4097) == "passed"  # the old path's frame: it fills the gap
    assert feed.out == [1, 4097, 4098] and feed.missed == 0
    assert feed(4099) == "passed"
    assert feed(4098) == "dropped"


def test_a_gap_filled_in_part_counts_the_rest() -> None:
    feed = Feed()
    feed(1, 500)
    feed(520)
    feed(501, 10)  # 501..510 arrive, 511..519 never do
    feed.wait(HOLD)  # 520 goes on, apart, not yet counted
    assert feed.out == [1, 501, 520] and feed.missed == 0
    feed(521)
    assert feed.missed == 9 and feed.out[-1] == 521


def test_repeated_gaps_each_count() -> None:
    feed = Feed()
    for first in range(1, 400, 20):  # every other frame of ten lost
        feed(first, 10)
    feed(401, 10)
    feed(411)
    feed.wait(HOLD)
    assert feed.missed == 200
    assert feed.out == [*range(1, 400, 20), 401, 411]


def test_one_forged_high_number_does_not_silence_the_publisher() -> None:
    feed = Feed()
    feed(1, 100)
    assert feed(1_000_000) == "held"
    for first in range(101, 151):
        assert feed(first) == "passed", first  # the real stream goes on
    feed.wait(HOLD)
    assert feed.out[-1] == 1_000_000  # passed on, apart (a key holder may publish)
    for first in range(151, 201):
        assert feed(first) == "passed", first
    assert feed(1_000_000) == "dropped"
    assert feed.missed == 0


def test_a_forged_number_while_the_publisher_is_quiet_is_not_counted_either() -> None:
    feed = Feed()
    feed(1, 100)
    feed(1_000_000)
    feed.wait(10 * HOLD)  # the publisher says nothing for a while
    assert feed.out == [1, 1_000_000]
    for first in range(101, 201):
        assert feed(first) == "passed", first
    assert feed.missed == 0


def test_a_restarted_publisher_starts_a_new_epoch() -> None:
    feed = Feed()
    feed(1, 1000)
    assert feed(1, epoch=99) == "passed"
    assert feed(2, epoch=99) == "passed"
    assert feed(1001) == "passed"  # the old epoch, if still around, is its own


def test_forgetting_a_tree_forgets_its_publishers_and_what_they_held() -> None:
    feed = Feed()
    feed(1)
    feed(10)
    feed.streams.forget_tree(TREE)
    assert len(feed.streams) == 0
    assert feed.streams.next_release == float("inf")
    assert feed(1) == "passed"


def test_what_is_held_goes_on_exactly_at_next_release() -> None:
    # A virtual clock jumps to the deadline next_release gives: whatever the
    # float rounding, release() must then let it go (or a node ticks forever).
    for step in range(1, 2000):
        feed = Feed()
        feed.now = step * 0.037
        feed(1)
        feed(3)
        due = feed.streams.next_release
        assert feed.streams.release(due), (step, due)
        assert feed.streams.next_release == float("inf")

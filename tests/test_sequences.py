"""PublisherStreams: duplicates, gaps counted as missed, and forged numbers."""

from __future__ import annotations

from iris_trio.overlay.sequences import MAX_UNCONFIRMED, PublisherStreams

TREE, PUBLISHER, EPOCH = 1, 2, 3


def feed(
    streams: PublisherStreams, first: int, count: int = 1, epoch: int = EPOCH
) -> tuple[bool, int]:
    verdict = streams.accept(TREE, PUBLISHER, epoch, first, count)
    return verdict.deliver, verdict.missed


def test_in_order_frames_pass_and_duplicates_do_not() -> None:
    streams = PublisherStreams()
    assert feed(streams, 1, 3) == (True, 0)
    assert feed(streams, 4, 2) == (True, 0)
    assert feed(streams, 4, 2) == (False, 0)
    assert feed(streams, 1) == (False, 0)
    assert feed(streams, 5, 3) == (True, 0)  # a new tail is passed on
    assert feed(streams, 8) == (True, 0)


def test_a_subscriber_joining_mid_stream_misses_nothing() -> None:
    streams = PublisherStreams()
    assert feed(streams, 5000) == (True, 0)
    assert feed(streams, 5001) == (True, 0)


def test_a_gap_counts_once_a_later_frame_confirms_it() -> None:
    streams = PublisherStreams()
    feed(streams, 1, 10)
    assert feed(streams, 21, 5) == (True, 0)  # 11..20 missing: not yet sure
    assert feed(streams, 26) == (True, 10)  # the stream goes on: they were missed
    assert feed(streams, 15) == (False, 0)  # a late one from the gap stays out (order)
    assert feed(streams, 27) == (True, 0)


def test_repeated_gaps_each_count() -> None:
    streams = PublisherStreams()
    missed = 0
    for first in range(1, 400, 20):  # every other frame of ten lost
        deliver, gap = feed(streams, first, 10)
        assert deliver
        missed += gap
    missed += feed(streams, 401, 10)[1]
    assert missed == 190  # the gap before 401 is not sure yet
    assert feed(streams, 411) == (True, 10)


def test_one_forged_high_number_does_not_silence_the_publisher() -> None:
    streams = PublisherStreams()
    feed(streams, 1, 100)
    assert feed(streams, 1_000_000) == (True, 0)  # forged: passed on, like any event
    for first in range(101, 151):
        assert feed(streams, first) == (True, 0), first  # the real stream goes on
    assert feed(streams, 1_000_000) == (False, 0)


def test_a_forged_stream_is_given_up_and_never_counted() -> None:
    streams = PublisherStreams()
    feed(streams, 1)
    feed(streams, 10_000)
    for first in range(2, 2 + MAX_UNCONFIRMED + 2):
        feed(streams, first)
    # The real stream reaches the forged number later: no missed events appear.
    total = sum(feed(streams, n)[1] for n in range(100, 10_010))
    assert total == 100 - (2 + MAX_UNCONFIRMED + 2)


def test_events_overtaken_on_a_new_path_fill_the_gap_without_counting() -> None:
    streams = PublisherStreams()
    feed(streams, 1, 500)
    assert feed(streams, 520) == (True, 0)  # the new path is faster
    assert feed(streams, 501, 19) == (True, 0)  # the old path's events arrive
    assert feed(streams, 521) == (True, 0)
    assert feed(streams, 510) == (False, 0)


def test_a_restarted_publisher_starts_a_new_epoch() -> None:
    streams = PublisherStreams()
    feed(streams, 1, 1000)
    assert feed(streams, 1, epoch=99) == (True, 0)
    assert feed(streams, 2, epoch=99) == (True, 0)
    assert feed(streams, 1001) == (True, 0)  # the old epoch, if still around, is its own


def test_forgetting_a_tree_forgets_its_publishers() -> None:
    streams = PublisherStreams()
    feed(streams, 1)
    streams.forget_tree(TREE)
    assert len(streams) == 0
    assert feed(streams, 1) == (True, 0)

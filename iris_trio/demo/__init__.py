"""``iris-trio demo``: the system at work on this host, with live figures.

1. The patterns (the main stage): six nodes on the loopback-only dev network;
   request/reply load-balanced over a cluster of three with a line per second,
   a member leaving while requests flow, broadcast, publish/subscribe, and a
   tunnel copying 20 MB (see :mod:`iris_trio.demo._patterns`).
2. Underneath: one secure link streaming frames, then the overlay forming a
   ring, routing keys, growing a tree and repairing a leave.
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._command import CommandParser, at_least, until_stopped
from ._basics import link_stage, overlay_stage
from ._patterns import patterns_stage

__all__ = ["main"]

_DESCRIPTION = """\
The system at work on this host, with live figures; everything runs in this
process, on loopback, on the dev network (nothing leaves the host).

1. The patterns: six nodes; request/reply load-balanced over a cluster of three,
   with a line per second and a member leaving while requests flow; broadcast;
   publish/subscribe; a tunnel copying 20 MB.
2. Underneath: one secure link streaming frames, then the overlay forming a
   ring, routing keys, growing a tree and repairing a leave."""

_EPILOG = "Ctrl-C stops the demo: exit status 130."


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 3600:
        raise ArgumentTypeError(f"{text!r} is out of range; use 1 to 3600 seconds")
    return value


def main(argv: list[str]) -> int:
    """Entry point of ``iris-trio demo``; returns the exit status (Ctrl-C: the
    command line reports it and exits 130)."""
    parser = CommandParser(prog="iris-trio demo", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument(
        "--seconds",
        type=_seconds,
        default=3.0,
        metavar="S",
        help="length of each live stage, 1 to 3600 (default 3)",
    )
    parser.add_argument(
        "--size",
        type=at_least(1, 8 * 1024 * 1024),
        default=1024,
        metavar="BYTES",
        help="frame size of the secure-link stage, 1 to 8 MiB (default 1024)",
    )
    parser.add_argument(
        "--nodes",
        type=at_least(4, 64),
        default=8,
        metavar="N",
        help="nodes of the overlay stage, 4 to 64 (default 8)",
    )
    args = parser.parse_args(argv)
    trio.run(_interruptible, patterns_stage, args.seconds)
    print("\nunderneath: one secure link between two nodes")
    trio.run(_interruptible, link_stage, args.seconds, args.size)
    trio.run(_interruptible, overlay_stage, args.nodes)
    return 0


async def _interruptible(stage: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``stage``; Ctrl-C (or SIGTERM) cancels it (its nodes stop as on any
    cancellation), then raises KeyboardInterrupt. Trio would otherwise raise
    KeyboardInterrupt in whatever task was running when the signal came, midway
    through its work: the demo then went on running now and then
    (test_demo_exits_130_on_ctrl_c hung in 2 of 10 runs on a loaded machine)."""
    if await until_stopped(lambda: stage(*args)):
        raise KeyboardInterrupt

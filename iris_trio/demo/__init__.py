"""``iris-trio demo``: the system at work on this host, with live figures.

1. The patterns (the main stage): six nodes on the loopback-only dev network;
   request/reply load-balanced over a cluster of three with a line per second,
   a member leaving while requests flow, broadcast, publish/subscribe, and a
   tunnel copying 20 MB (see :mod:`iris_trio.demo._patterns`).
2. Underneath: one secure link streaming frames, then the overlay forming a
   ring, routing keys, growing a tree and repairing a leave.
"""

from __future__ import annotations

import argparse

import trio

from ._basics import link_stage, overlay_stage
from ._patterns import patterns_stage

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Entry point of ``iris-trio demo``."""
    parser = argparse.ArgumentParser(prog="iris-trio demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the live stages")
    parser.add_argument("--size", type=int, default=1024, help="frame size of the link stage")
    parser.add_argument("--nodes", type=int, default=8, help="nodes of the overlay stage")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    trio.run(patterns_stage, args.seconds)
    print("\nunderneath: one secure link between two nodes")
    trio.run(link_stage, args.seconds, args.size)
    trio.run(overlay_stage, max(args.nodes, 4))
    return 0

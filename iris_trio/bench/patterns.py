"""``iris-trio bench pubsub|request|broadcast|tunnel``: the four patterns between
node processes on loopback, over encrypted links.

This process runs one node (the publisher, requester, broadcaster or tunnel
opener); the far ends are node processes of :mod:`iris_trio.bench._peer`,
joined to it by its address as their seed (no discovery). Latencies are one
way (pub/sub, broadcast: the messages carry their send time, on the host's
monotonic clock) or round trips (requests).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from .. import Node, join
from .._command import BENCH_EPILOG, CommandParser, at_least, plain, seconds
from ..overlay.ids import from_bytes, name_id, ring_distance
from ._common import calls_in, emit, process_cpu, round_trips
from ._stats import stamp

__all__ = ["main_broadcast", "main_pubsub", "main_request", "main_tunnel"]


class Peer:
    """A far-end node process (see :mod:`iris_trio.bench._peer`)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._stdout = process.stdout
        self._buffer = b""

    async def line(self, timeout: float = 60) -> str:
        """The next line the peer printed."""
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self._stdout.receive_some()
                if not chunk:
                    raise RuntimeError("a benchmark peer exited early")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def result(self, timeout: float = 600) -> dict[str, Any]:
        """The peer's JSON line of figures."""
        figures: dict[str, Any] = json.loads(await self.line(timeout))
        return figures


@asynccontextmanager
async def peers(
    node: Node, role: str, kind: str, *, count: int = 0, copies: int = 1
) -> AsyncIterator[tuple[str, list[Peer]]]:
    """Start ``copies`` peers in ``role``, seeded with ``node``; wait until ready.

    Yields the cluster or topic name they use (``kind``: "cluster" or "topic"),
    chosen so that its tree is rooted at the first peer, not at ``node``: every
    message then crosses the overlay as a routed message, as it does in a larger
    overlay (where the root is usually a third node), and runs are comparable.
    """
    started: list[Peer] = []
    arguments = ["--seed", node.address, "--count", str(count)]
    try:
        for _ in range(copies):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "iris_trio.bench._peer", role, "-", *arguments],
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE,
            )
            started.append(Peer(process))
        ids = [int((await peer.line()).split()[1], 16) for peer in started]
        name = _rooted_at(ids[0], [from_bytes(node.id), *ids[1:]], kind)
        for peer in started:
            assert peer.process.stdin is not None
            await peer.process.stdin.send_all(name.encode() + b"\n")
        for peer in started:
            await peer.line()  # "ready"
        await trio.sleep(0.5)  # let the overlay settle (trees, capacity reports)
        yield name, started
    finally:
        for peer in started:
            if peer.process.returncode is None:
                peer.process.kill()  # by pid: only what we started
            with trio.move_on_after(5):
                await peer.process.wait()


def _rooted_at(root: int, others: list[int], kind: str) -> str:
    """A name whose id is closer to ``root`` than to any of ``others``."""
    for number in itertools.count():
        name = f"bench-{number}"
        key = name_id(kind, name)
        if all(ring_distance(root, key) < ring_distance(other, key) for other in others):
            return name
    raise AssertionError("unreachable")


async def _pace(node: Node, send: Any, count: int, payload: bytes) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await send(stamp(payload))
    return time.perf_counter() - start


async def pubsub(count: int, size: int) -> dict[str, Any]:
    """One publisher, one subscriber process, ``count`` messages of ``size`` bytes."""
    async with (
        join(discovery="off") as node,
        peers(node, "subscriber", "topic", count=count) as (topic, far),
    ):
        elapsed = await _pace(node, lambda data: node.publish(topic, data), count, bytes(size))
        result = await far[0].result()
    return {
        "messages": count,
        "size": size,
        "send_per_s": count / elapsed,
        "recv_per_s": result["recv_per_s"],
        "delivered": result["received"] / count,
        "latency_mean_us": result["latency_mean_us"],
        "latency_p99_us": result["latency_p99_us"],
    }


async def broadcast(count: int, size: int, members: int) -> dict[str, Any]:
    """One sender, ``members`` member processes, ``count`` messages of ``size`` bytes."""
    async with (
        join(discovery="off") as node,
        peers(node, "broadcasts", "cluster", count=count, copies=members) as (cluster, far),
    ):
        elapsed = await _pace(node, lambda data: node.broadcast(cluster, data), count, bytes(size))
        results = [await peer.result() for peer in far]
    return {
        "messages": count,
        "size": size,
        "members": members,
        "send_per_s": count / elapsed,
        "recv_per_s": min(r["recv_per_s"] for r in results),
        "delivered": min(r["received"] for r in results) / count,
        "latency_mean_us": statistics.mean(r["latency_mean_us"] for r in results),
        "latency_p99_us": max(r["latency_p99_us"] for r in results),
    }


async def request(count: int, duration: float, size: int) -> dict[str, Any]:
    """Round trips to one echo member process: sequential latency, then throughput."""
    payload = bytes(size)
    async with join(discovery="off") as node, peers(node, "echo", "cluster") as (cluster, far):
        figures: dict[str, Any] = {"requests": count, "size": size}
        figures |= await round_trips(lambda: node.request(cluster, payload), count)
        member = far[0].process.pid
        for in_flight in (1, 8, 64):
            ours, theirs = process_cpu(), process_cpu(member)
            done, elapsed = await calls_in(
                lambda: node.request(cluster, payload), in_flight, duration
            )
            figures[f"throughput_{in_flight}"] = done / elapsed
            # CPU time per request at each end (process CPU, all threads).
            figures[f"cpu_us_requester_{in_flight}"] = (process_cpu() - ours) / done * 1e6
            figures[f"cpu_us_member_{in_flight}"] = (process_cpu(member) - theirs) / done * 1e6
    return figures


async def tunnel(small: int, large: int) -> dict[str, Any]:
    """One tunnel to a sink process: ``small`` 1-byte messages, ``large`` 64 KiB ones."""
    figures: dict[str, Any] = {}
    async with join(discovery="off") as node, peers(node, "sink", "cluster") as (cluster, _):
        for label, count, size in (("small", small, 1), ("large", large, 65536)):
            message = bytes(size)
            async with node.tunnel(cluster) as channel:
                begun = time.perf_counter()
                await channel.send(b"%d" % count)
                for _ in range(count):
                    await channel.send(message)
                if await channel.receive() != b"done":
                    raise RuntimeError("the sink answered something else")
                elapsed = time.perf_counter() - begun
            figures[f"{label}_messages"] = count
            figures[f"{label}_per_s"] = count / elapsed
            if label == "large":
                figures["large_mb_per_s"] = count * size / elapsed / 1e6
        # Ping-pong latency: a message there and back, one at a time.
    return figures


_MAX_SIZE = 8 * 1024 * 1024


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=f"iris-trio bench {name}",
        description=f"{description}\n\n{plain(__doc__)}",
        epilog=BENCH_EPILOG,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON line of figures last")
    return parser


def _size(
    parser: argparse.ArgumentParser, default: int, minimum: int, what: str, why: str = ""
) -> None:
    parser.add_argument(
        "--size",
        type=at_least(minimum, _MAX_SIZE),
        default=default,
        metavar="BYTES",
        help=f"{what} in bytes, {minimum} to 8 MiB (default {default}){why}",
    )


def _finish(figures: dict[str, Any], as_json: bool, title: str) -> None:
    for key, value in figures.items():
        if isinstance(value, float) and not math.isfinite(value):
            figures[key] = None
    emit(figures, as_json=as_json, title=title)


def main_pubsub(argv: Sequence[str] | None = None) -> None:
    """``iris-trio bench pubsub``."""
    parser = _parser("pubsub", "one publisher, one subscriber process, 1 KiB messages")
    parser.add_argument(
        "--messages",
        type=at_least(1),
        default=1_000_000,
        metavar="N",
        help="messages published (default 1,000,000)",
    )
    _size(parser, 1024, 8, "message size", "; messages carry their 8-byte send time")
    args = parser.parse_args(argv)
    figures = trio.run(pubsub, args.messages, args.size)
    _finish(figures, args.json, "publish/subscribe between two node processes")


def main_broadcast(argv: Sequence[str] | None = None) -> None:
    """``iris-trio bench broadcast``."""
    parser = _parser("broadcast", "one sender, member processes, 1 KiB messages")
    parser.add_argument(
        "--messages",
        type=at_least(1),
        default=100_000,
        metavar="N",
        help="messages broadcast (default 100,000)",
    )
    _size(parser, 1024, 8, "message size", "; messages carry their 8-byte send time")
    parser.add_argument(
        "--members",
        type=at_least(1, 64),
        default=3,
        metavar="N",
        help="member processes, 1 to 64 (default 3)",
    )
    args = parser.parse_args(argv)
    figures = trio.run(broadcast, args.messages, args.size, args.members)
    _finish(figures, args.json, f"broadcast to {args.members} member processes")


def main_request(argv: Sequence[str] | None = None) -> None:
    """``iris-trio bench request``."""
    parser = _parser("request", "round trips to one member process")
    parser.add_argument(
        "--requests",
        type=at_least(1),
        default=5000,
        metavar="N",
        help="sequential round trips for the latency figures, after 200 to warm up (default 5000)",
    )
    parser.add_argument(
        "--duration",
        type=seconds,
        default=3.0,
        metavar="S",
        help="seconds of each throughput run, at 1, 8 and 64 in flight (default 3)",
    )
    _size(parser, 16, 1, "request and reply size")
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration: use a positive number of seconds")
    figures = trio.run(request, args.requests, args.duration, args.size)
    _finish(figures, args.json, "request/reply with one member process")


def main_tunnel(argv: Sequence[str] | None = None) -> None:
    """``iris-trio bench tunnel``."""
    parser = _parser("tunnel", "one tunnel to a member process")
    parser.add_argument(
        "--small",
        type=at_least(1),
        default=200_000,
        metavar="N",
        help="1-byte messages sent through the tunnel (default 200,000)",
    )
    parser.add_argument(
        "--large",
        type=at_least(1),
        default=4000,
        metavar="N",
        help="64 KiB messages sent through the tunnel (default 4000)",
    )
    args = parser.parse_args(argv)
    figures = trio.run(tunnel, args.small, args.large)
    _finish(figures, args.json, "tunnel to one member process")

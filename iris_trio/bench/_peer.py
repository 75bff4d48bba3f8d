"""The far end of the pattern benchmarks: one node process playing one role.

``python -m iris_trio.bench._peer ROLE NAME [--seed ADDRESS] [--count N]``
prints its listen address and node id on the first line, ``ready`` once it is a linked
member or subscriber, and (for the measuring roles) one JSON line of figures
when it is done. Roles:

- ``subscriber`` / ``broadcasts``: receive ``--count`` messages on topic /
  cluster NAME (or stop 10 s after the last one), then report the count, the
  receive rate and the one-way latency (messages carry their send time).
- ``echo``: answer requests of cluster NAME with their own data, until killed;
  ``tagged``: the same, with this node's id (hex) and ":" in front.
- ``sink``: take tunnels of cluster NAME; on each, read a count (ASCII), then
  that many messages, then answer ``done``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import struct
import sys
import time
from typing import Any

import trio

from .. import join
from ..patterns.subscription import Subscription
from ..patterns.tunnel import Tunnel

__all__ = ["main"]

_STAMP = struct.Struct(">Q")


def stamp(payload: bytearray | bytes) -> bytes:
    """``payload`` with its first 8 bytes replaced by the current monotonic time."""
    return _STAMP.pack(time.monotonic_ns()) + payload[8:]


def latency_figures(latencies_ns: list[int]) -> dict[str, float]:
    """Mean and p99 latency in microseconds."""
    if not latencies_ns:
        return {"latency_mean_us": math.nan, "latency_p99_us": math.nan}
    ordered = sorted(latencies_ns)
    return {
        "latency_mean_us": sum(ordered) / len(ordered) / 1000,
        "latency_p99_us": ordered[int(0.99 * (len(ordered) - 1))] / 1000,
    }


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _collect(channel: Subscription, count: int) -> dict[str, Any]:
    latencies: list[int] = []
    received = 0
    first = last = 0.0
    unpack = _STAMP.unpack_from
    while received < count:
        try:
            message = channel.receive_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(10 if received else 60) as idle:
                message = await channel.receive()
            if idle.cancelled_caught:
                break
        latencies.append(time.monotonic_ns() - unpack(message)[0])
        last = time.perf_counter()
        if not received:
            first = last
        received += 1
    elapsed = last - first
    return {
        "received": received,
        "recv_per_s": (received - 1) / elapsed if elapsed > 0 else math.nan,
        **latency_figures(latencies),
    }


async def _sink(tunnel: Tunnel) -> None:
    async with tunnel:
        count = int(await tunnel.receive())
        for _ in range(count):
            await tunnel.receive()
        await tunnel.send(b"done")
        with contextlib.suppress(trio.EndOfChannel):
            await tunnel.receive()  # until the far end closes


async def run(role: str, name: str, seeds: list[str], count: int) -> None:
    """Play ``role`` (see the module docstring). With NAME ``-``, the name is read
    from standard input once the node's id is printed (so that the harness can
    pick one whose tree is rooted where it wants)."""
    async with join(seeds=seeds, discovery="off") as node:
        _say(f"{node.address} {node.id.hex()}")
        if name == "-":
            name = (await trio.to_thread.run_sync(sys.stdin.readline)).strip()
        await node.wait_joined()
        if role == "subscriber":
            async with node.subscribe(name, capacity=count + 1) as events:
                _say("ready")
                _say(json.dumps(await _collect(events, count)))
        elif role == "broadcasts":
            async with node.join(name), node.broadcasts(capacity=count + 1) as messages:
                _say("ready")
                _say(json.dumps(await _collect(messages, count)))
        elif role in ("echo", "tagged"):
            tag = node.id.hex().encode() + b":" if role == "tagged" else b""
            async with node.requests(name, limit=1024) as incoming:
                _say("ready")
                async for request in incoming:
                    await request.reply(tag + request.data)
        elif role == "sink":
            async with node.tunnels(name) as incoming, trio.open_nursery() as nursery:
                _say("ready")
                async for tunnel in incoming:
                    nursery.start_soon(_sink, tunnel)
        else:
            raise SystemExit(f"unknown role {role!r}")


def main(argv: list[str] | None = None) -> None:
    """Entry point (``python -m iris_trio.bench._peer``)."""
    parser = argparse.ArgumentParser(prog="iris_trio.bench._peer")
    parser.add_argument("role", choices=["subscriber", "broadcasts", "echo", "tagged", "sink"])
    parser.add_argument("name")
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args(argv)
    trio.run(run, args.role, args.name, args.seed, args.count)


if __name__ == "__main__":
    main()

"""The far end of the pattern benchmarks: one node process playing one role.

``python -m iris_trio.bench._peer ROLE NAME [--seed ADDRESS] [--count N]``
prints its listen address and node id on the first line, ``ready`` once it is a linked
member or subscriber, and (for the measuring roles) one JSON line of figures
when it is done. Roles:

- ``subscriber`` / ``broadcasts``: receive ``--count`` messages on topic /
  cluster NAME (or stop 10 s after the last one), then report the count, the
  receive rate and the one-way latency (messages carry their send time).
- ``echo``: answer requests of cluster NAME with their own data (``serve``,
  up to 1,024 at a time), until killed;
  ``tagged``: the same, with this node's id (hex) and ":" in front.
- ``sink``: take tunnels of cluster NAME; on each, read a count (ASCII), then
  that many messages, then answer ``done``.
- ``publisher``: after a line on stdin, publish ``--count`` stamped messages of
  ``--size`` bytes on topic NAME; report the send rate.
- ``requester``: after a line on stdin, ``--count`` sequential requests to
  cluster NAME (p50/p99), then ``--duration`` seconds with 64 in flight.

``--net``/``--key``/``--discovery lan``/``--listen`` put it on a real network
(hosts in network namespaces); the default is the dev network without discovery.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Awaitable
from typing import Any

import trio

from .. import Node, join
from .._command import quiet_interrupt
from ..crypto.keys import NetworkKey
from ..patterns.subscription import Subscription
from ..patterns.tunnel import Tunnel
from ._common import calls_per_second, round_trips
from ._stats import StreamStats, stamp

__all__ = ["main"]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _collect(channel: Subscription, count: int) -> dict[str, Any]:
    stats = StreamStats(count)
    while stats.received < count:
        try:
            message = channel.receive_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(10 if stats.received else 60) as idle:
                message = await channel.receive()
            if idle.cancelled_caught:
                break
        stats.add(message)
    return stats.figures()


async def _sink(tunnel: Tunnel) -> None:
    async with tunnel:
        count = int(await tunnel.receive())
        for _ in range(count):
            await tunnel.receive()
        await tunnel.send(b"done")
        with contextlib.suppress(trio.EndOfChannel):
            await tunnel.receive()  # until the far end closes


async def _line() -> str:
    line: str = await trio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


async def _publish(node: Node, topic: str, count: int, size: int) -> dict[str, Any]:
    payload = bytes(size)
    begun = time.perf_counter()
    for _ in range(count):
        await node.publish(topic, stamp(payload))
    return {"send_per_s": count / (time.perf_counter() - begun)}


async def _ask(node: Node, cluster: str, count: int, duration: float) -> dict[str, Any]:
    payload = bytes(16)

    def ask() -> Awaitable[bytes]:
        return node.request(cluster, payload)

    figures: dict[str, Any] = await round_trips(ask, count)
    figures["throughput"] = await calls_per_second(ask, 64, duration)
    return figures


async def run(args: argparse.Namespace) -> None:
    """Play ``args.role`` (see the module docstring). With NAME ``-``, the name is
    read from standard input once the node's id is printed (so that the harness
    can pick one whose tree is rooted where it wants)."""
    role, name, count = args.role, args.name, args.count
    network: dict[str, Any] = {"discovery": args.discovery, "listen": args.listen}
    if args.net:
        network |= {"network": args.net, "key": NetworkKey.from_file(args.key)}
    async with join(seeds=args.seed, **network) as node:
        _say(f"{node.address} {node.id.hex()}")
        if name == "-":
            name = await _line()
        await node.wait_joined()
        if role == "publisher":  # the topic's tree is linked once a subscriber joined it
            _say("ready")
            await _line()
            _say(json.dumps(await _publish(node, name, count, args.size)))
        elif role == "requester":
            _say("ready")
            await _line()
            _say(json.dumps(await _ask(node, name, count, args.duration)))
        elif role == "subscriber":
            async with node.subscribe(name, capacity=count + 1) as events:
                _say("ready")
                _say(json.dumps(await _collect(events, count)))
        elif role == "broadcasts":
            async with node.join(name), node.broadcasts(capacity=count + 1) as messages:
                _say("ready")
                _say(json.dumps(await _collect(messages, count)))
        elif role in ("echo", "tagged"):
            tag = node.id.hex().encode() + b":" if role == "tagged" else b""

            async def answer(data: bytes) -> bytes:
                return tag + data

            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(node.serve, answer, name, limit=1024))
                _say("ready")
        elif role == "sink":
            async with node.tunnels(name) as incoming, trio.open_nursery() as nursery:
                _say("ready")
                async for tunnel in incoming:
                    nursery.start_soon(_sink, tunnel)
        else:
            raise SystemExit(f"unknown role {role!r}")


_ROLES = ("subscriber", "broadcasts", "echo", "tagged", "sink", "publisher", "requester")


def main(argv: list[str] | None = None) -> None:
    """Entry point (``python -m iris_trio.bench._peer``)."""
    parser = argparse.ArgumentParser(prog="iris_trio.bench._peer")
    parser.add_argument("role", choices=[*_ROLES])
    parser.add_argument("name")
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--discovery", choices=["lan", "loopback", "off"], default="off")
    parser.add_argument("--listen", default=None)
    parser.add_argument("--net", default=None, help="a real network (with --key)")
    parser.add_argument("--key", default=None)
    args = parser.parse_args(argv)
    quiet_interrupt(lambda: trio.run(run, args))  # the terminal's Ctrl-C reaches it too


if __name__ == "__main__":
    main()

"""``iris-trio bench relay``: the binding benchmark matrix of the original Iris,
through the relay with one local node.

An ``iris-trio node`` daemon runs as its own process; this process attaches a
service and a client to it over the relay (as the original's Go binding
benchmarks did) and measures, with 1-byte messages unless told otherwise:
request latency (sequential) and throughput at 1, 8 and 64 concurrent requests;
broadcast and publish latency and throughput; tunnel ping-pong latency and
one-way throughput. The CPU time of the node process and of this (client)
process are reported per operation, so the node's own cost is visible. The
original Go node's figures on this class of machine are printed alongside.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import trio

from .._command import BENCH_EPILOG, CommandParser, at_least, plain
from ..relay.client import Connection, connect, register
from ._common import emit, first_line

__all__ = ["GO_NODE", "main", "run"]

#: The original Go node, through its relay, on this class of machine (us/op).
GO_NODE: Final = {
    "request_latency_us": 206.0,
    "request_64_us_per_op": 52.0,
    "publish_us_per_op": 16.0,
    "broadcast_us_per_op": 22.0,  # 12-22 depending on the run
    "tunnel_latency_us": 166.0,
    "tunnel_us_per_op": 42.0,
}
_TICK: Final = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class _Meter:
    """Wall and CPU time of one phase, for the node process and this one."""

    def __init__(self, node_pid: int) -> None:
        self._pid = node_pid

    def __enter__(self) -> _Meter:
        self._wall = time.perf_counter()
        self._node = _process_cpu(self._pid)
        self._client = time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.node_cpu = _process_cpu(self._pid) - self._node
        self.client_cpu = time.process_time() - self._client

    def figures(self, name: str, operations: int) -> dict[str, float]:
        """``name``_us_per_op and the CPU of each side per operation."""
        return {
            f"{name}_us_per_op": self.wall / operations * 1e6,
            f"{name}_node_cpu_us_per_op": self.node_cpu / operations * 1e6,
            f"{name}_client_cpu_us_per_op": self.client_cpu / operations * 1e6,
        }


@asynccontextmanager
async def _daemon() -> AsyncIterator[tuple[int, int]]:
    """An ``iris-trio node`` on a free relay port, alone; yields (port, pid)."""
    command = [sys.executable, "-m", "iris_trio.cli", "node", "--dev", "--port", "0"]
    process = await trio.lowlevel.open_process(
        [*command, "--discovery", "off"], stdout=subprocess.PIPE
    )
    try:
        line = await first_line(process, 30, "the node daemon")
        yield json.loads(line)["relay_port"], process.pid
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def _timed(operation: Callable[[], Awaitable[None]], count: int) -> list[float]:
    """Per-call seconds of ``count`` sequential calls."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await operation()
        samples.append(time.perf_counter() - started)
    return samples


def _latency(name: str, samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        f"{name}_latency_us": statistics.fmean(samples) * 1e6,
        f"{name}_p50_us": ordered[len(ordered) // 2] * 1e6,
        f"{name}_p99_us": ordered[int(len(ordered) * 0.99)] * 1e6,
    }


async def _requests(client: Connection, pid: int, count: int, payload: bytes) -> dict[str, float]:
    figures = _latency("request", await _timed(lambda: _ask(client, payload), count))
    for concurrency in (1, 8, 64):
        each = max(1, count // concurrency)
        with _Meter(pid) as meter:
            async with anyio.create_task_group() as tasks:
                for _ in range(concurrency):
                    tasks.start_soon(_ask_many, client, payload, each)
        figures |= meter.figures(f"request_{concurrency}", each * concurrency)
    return figures


async def _ask(client: Connection, payload: bytes) -> None:
    await client.request("bench", payload, timeout=30)


async def _ask_many(client: Connection, payload: bytes, count: int) -> None:
    for _ in range(count):
        await client.request("bench", payload, timeout=30)


async def _events(
    name: str,
    send: Callable[[bytes], Awaitable[None]],
    receive: Callable[[], Awaitable[bytes]],
    pid: int,
    count: int,
    payload: bytes,
) -> dict[str, float]:
    """Latency (send, then wait for it) and throughput (send all, receive all)."""

    async def one() -> None:
        await send(payload)
        await receive()

    figures = _latency(name, await _timed(one, max(1, count // 10)))
    received = 0
    with _Meter(pid) as meter:
        async with anyio.create_task_group() as tasks:

            async def receive_all() -> None:
                nonlocal received
                while received < count:
                    with anyio.move_on_after(2.0) as quiet:
                        await receive()
                    if quiet.cancelled_caught:
                        return  # the rest was dropped (counted below)
                    received += 1

            tasks.start_soon(receive_all)
            for _ in range(count):
                await send(payload)
    figures[f"{name}_delivered"] = received / count
    return figures | meter.figures(name, count)


async def _tunnel_end(service: Connection) -> None:
    """The far end: echo on the first tunnel, count on the second."""
    async with await service.tunnels.receive() as echo:
        async for message in echo:
            if message == b"done":
                break
            await echo.send(message)
    async with await service.tunnels.receive() as sink:
        received = 0
        async for message in sink:
            if message == b"done":
                await sink.send(b"%d" % received)
                break
            received += 1


async def _tunnels(
    client: Connection, service: Connection, pid: int, count: int, payload: bytes
) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_tunnel_end, service)
        async with client.tunnel("bench", timeout=10) as tunnel:

            async def ping() -> None:
                await tunnel.send(payload)
                await tunnel.receive()

            figures |= _latency("tunnel", await _timed(ping, max(1, count // 10)))
            await tunnel.send(b"done")
        async with client.tunnel("bench", timeout=10) as sink:
            with _Meter(pid) as meter:
                for _ in range(count):
                    await sink.send(payload)
                await sink.send(b"done")
                received = int(await sink.receive())
            assert received == count, f"the tunnel lost messages: {received} of {count}"
        figures |= meter.figures("tunnel", count)
    return figures


async def _serve_bench(service: Connection) -> None:
    async def echo(data: bytes) -> bytes:
        return data

    await service.serve(echo, limit=64)


async def run(count: int, size: int) -> dict[str, Any]:
    """One pass of the matrix with ``count`` operations per figure."""
    payload = b"x" * size
    async with (
        _daemon() as (port, pid),
        register(port, "bench") as service,
        connect(port) as client,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_serve_bench, service)
        figures: dict[str, Any] = {"operations": count, "size": size}
        figures |= await _requests(client, pid, count, payload)
        async with service.subscribe("bench-topic") as events:
            figures |= await _events(
                "publish",
                lambda data: client.publish("bench-topic", data),
                events.receive,
                pid,
                count,
                payload,
            )
        figures |= await _events(
            "broadcast",
            lambda data: client.broadcast("bench", data),
            service.broadcasts.receive,
            pid,
            count,
            payload,
        )
        figures |= await _tunnels(client, service, pid, count, payload)
        tasks.cancel_scope.cancel()
    return figures


def _compare(figures: dict[str, Any]) -> dict[str, Any]:
    """Each Go figure beside ours, and the ratio ours / Go (below 1: we are faster)."""
    ours = {
        "request_latency_us": figures["request_latency_us"],
        "request_64_us_per_op": figures["request_64_us_per_op"],
        "publish_us_per_op": figures["publish_us_per_op"],
        "broadcast_us_per_op": figures["broadcast_us_per_op"],
        "tunnel_latency_us": figures["tunnel_latency_us"],
        "tunnel_us_per_op": figures["tunnel_us_per_op"],
    }
    return {f"vs_go_{name}": round(value / GO_NODE[name], 2) for name, value in ours.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """``iris-trio bench relay``."""
    parser = CommandParser(
        prog="iris-trio bench relay", description=plain(__doc__), epilog=BENCH_EPILOG
    )
    parser.add_argument(
        "--operations",
        type=at_least(10),
        default=20_000,
        metavar="N",
        help="operations per throughput figure, at least 10 (default 20,000)",
    )
    parser.add_argument(
        "--size",
        type=at_least(1, 8 * 1024 * 1024),
        default=1,
        metavar="BYTES",
        help="message size, 1 byte to 8 MiB (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON line of figures last")
    args = parser.parse_args(argv)
    figures = trio.run(run, args.operations, args.size)
    figures |= _compare(figures)
    emit(figures, as_json=args.json, title="relay: one node daemon, service and client attached")

"""Helpers shared by the benchmark scenarios: child processes, medians, output."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ._stats import percentiles

__all__ = ["calls_per_second", "emit", "first_line", "median", "round_trips", "spawn_peer"]


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


async def spawn_peer(module: str, *args: str) -> tuple[trio.Process, int]:
    """Start ``python -m module args...``; it prints its listening port on its first line."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
    )
    try:
        return process, int(await first_line(process, 20, f"benchmark peer {module}"))
    except BaseException:  # Ctrl-C or a failure before the caller owns it: no orphan
        process.kill()
        raise


async def first_line(process: trio.Process, timeout: float, what: str) -> bytes:
    """The first line ``process`` prints (read byte by byte: nothing more is taken)."""
    assert process.stdout is not None
    line = b""
    with trio.fail_after(timeout):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError(f"{what} exited before its first line")
            line += chunk
    return line


async def round_trips(ask: Callable[[], Awaitable[object]], count: int) -> dict[str, float]:
    """p50/p99 of ``count`` sequential calls of ``ask`` (after 200 to warm up)."""
    for _ in range(200):
        await ask()
    latencies = []
    for _ in range(count):
        begun = time.perf_counter_ns()
        await ask()
        latencies.append(time.perf_counter_ns() - begun)
    return percentiles(latencies)


async def calls_per_second(
    ask: Callable[[], Awaitable[object]], in_flight: int, duration: float
) -> float:
    """Calls of ``ask`` per second with ``in_flight`` at once for ``duration`` s."""
    done, elapsed = await calls_in(ask, in_flight, duration)
    return done / elapsed


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (None: this one)."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


async def calls_in(
    ask: Callable[[], Awaitable[object]], in_flight: int, duration: float
) -> tuple[int, float]:
    """Calls of ``ask`` done with ``in_flight`` at once for ``duration`` s, and
    the seconds that took."""
    done = 0

    async def lane() -> None:
        nonlocal done
        while True:
            await ask()
            done += 1

    begun = time.perf_counter()
    with trio.move_on_after(duration):
        async with trio.open_nursery() as lanes:
            for _ in range(in_flight):
                lanes.start_soon(lane)
    return done, time.perf_counter() - begun


def emit(figures: dict[str, Any], *, as_json: bool, title: str) -> None:
    """Print ``figures`` readably, then as one JSON line when asked."""
    print(title)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        if isinstance(value, float):
            shown = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        else:
            shown = str(value)
        print(f"  {key:<{width}}  {shown}")
    if as_json:
        print(json.dumps(figures, sort_keys=True))

"""Helpers shared by the benchmark scenarios: child processes, medians, output."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import trio

__all__ = ["emit", "median", "spawn_peer"]


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


async def spawn_peer(module: str, *args: str) -> tuple[trio.Process, int]:
    """Start ``python -m module args...``; it prints its listening port on its first line."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(20):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError(f"benchmark peer {module} exited before reporting its port")
            line += chunk
    return process, int(line)


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

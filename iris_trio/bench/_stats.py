"""Figures of a stream of stamped messages, shared by every system's benchmark ends.

A message's first 8 bytes carry its send time on the host's monotonic clock
(shared by every process of a host, network namespaces included), so the
receiver computes one-way latency.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Final

__all__ = ["CURVE_POINTS", "StreamStats", "percentiles", "stamp"]

_STAMP = struct.Struct(">Q")
#: Message counts at which the latency curve takes the mean latency so far (the
#: points of the 2014 message-queue comparison).
CURVE_POINTS: Final = (1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)


def stamp(payload: bytes) -> bytes:
    """``payload`` with its first 8 bytes replaced by the current monotonic time."""
    return _STAMP.pack(time.monotonic_ns()) + payload[8:]


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    """p50 and p99 of ``latencies_ns``, in microseconds."""
    if not latencies_ns:
        return {"latency_p50_us": math.nan, "latency_p99_us": math.nan}
    ordered = sorted(latencies_ns)
    return {
        "latency_p50_us": ordered[len(ordered) // 2] / 1000,
        "latency_p99_us": ordered[int(0.99 * (len(ordered) - 1))] / 1000,
    }


class StreamStats:
    """Receive-side figures of a stream of stamped messages.

    The mean latency of the first N messages equals that of a run of N messages
    (the sender does not know how many will follow), so one run of 1,000,000
    gives the whole latency curve.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self._latencies: list[int] = []
        self._first = self._last = 0.0
        self._unpack = _STAMP.unpack_from

    def add(self, message: bytes) -> None:
        """One message arrived (now)."""
        now = time.monotonic_ns()
        self._latencies.append(now - self._unpack(message)[0])
        self._last = time.perf_counter()
        if not self.received:
            self._first = self._last
        self.received += 1

    def figures(self) -> dict[str, object]:
        """received, recv_per_s, latency mean/p99 (µs) and the latency curve."""
        latencies = self._latencies
        elapsed = self._last - self._first
        curve: dict[str, float] = {}
        total = 0
        points = iter(CURVE_POINTS)
        point = next(points, None)
        for index, latency in enumerate(latencies, 1):
            total += latency
            if index == point:
                curve[str(point)] = total / index / 1000
                point = next(points, None)
        ordered = sorted(latencies)
        return {
            "received": self.received,
            "recv_per_s": (self.received - 1) / elapsed if elapsed > 0 else math.nan,
            "latency_mean_us": sum(latencies) / len(latencies) / 1000 if latencies else math.nan,
            "latency_p99_us": ordered[int(0.99 * (len(ordered) - 1))] / 1000
            if ordered
            else math.nan,
            "latency_curve_us": curve,
        }

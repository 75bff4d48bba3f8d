"""Rates from counters: per-second figures over the last few seconds (pure).

The node keeps counters only; the monitor samples them and divides the growth
over a short window by its length, so a rate shows what happens now and is
never a figure the node had to compute.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping

__all__ = ["RateMeter"]


class RateMeter:
    """Samples of named counters, and their rates of growth.

    Args:
        window: seconds the rates look back over (at most).
        samples: samples kept; with samples taken every ``window / (samples -
            1)`` seconds the oldest kept is ``window`` old.

    Raises:
        ValueError: ``window`` is not a positive number, or ``samples`` < 2.
    """

    def __init__(self, window: float = 4.0, samples: int = 17) -> None:
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a positive number of seconds, not {window!r}")
        if samples < 2:
            raise ValueError(f"a rate needs at least 2 samples, not {samples}")
        self.window = window
        self._samples: collections.deque[tuple[float, dict[str, float]]] = collections.deque(
            maxlen=samples
        )

    def record(self, now: float, counters: Mapping[str, float]) -> None:
        """Add a sample of ``counters`` taken at ``now`` (seconds, not decreasing)."""
        if self._samples and now < self._samples[-1][0]:
            raise ValueError("samples must be recorded in time order")
        self._samples.append((now, dict(counters)))

    def rates(self) -> dict[str, float]:
        """Per-second growth of each counter of the latest sample, over the
        window (or as far back as the samples go); 0.0 before two samples, and
        for a counter that went down (a restart starts again from zero)."""
        if not self._samples:
            return {}
        latest_time, latest = self._samples[-1]
        oldest_time, oldest = self._samples[0]
        for time, counters in self._samples:
            if latest_time - time <= self.window:
                oldest_time, oldest = time, counters
                break
        elapsed = latest_time - oldest_time
        rates: dict[str, float] = {}
        for name, value in latest.items():
            growth = value - oldest.get(name, value)
            rates[name] = growth / elapsed if elapsed > 0 and growth > 0 else 0.0
        return rates

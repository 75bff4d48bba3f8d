"""Logging helpers shared by the layers: warnings that could repeat many times a
second (a peer with the wrong key redialling, a seed that is down) go through a
:class:`LogLimiter` so that a log shows the problem, not a flood."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Hashable

__all__ = ["LogLimiter"]

#: Keys remembered at most (the oldest is forgotten first: memory stays bounded).
_MAX_KEYS = 1024


class LogLimiter:
    """At most one record per key every ``interval`` seconds; the next record
    that passes says how many were held back meanwhile.

    Log records are not protocol logic, so this reads the monotonic clock itself.
    """

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._last: collections.OrderedDict[Hashable, tuple[float, int]] = collections.OrderedDict()

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: Hashable,
        message: str,
        *args: object,
    ) -> bool:
        """Log ``message % args`` at ``level`` unless ``key`` was logged less than
        ``interval`` seconds ago; True if it was logged."""
        if not logger.isEnabledFor(level):
            return False
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        if len(self._last) > _MAX_KEYS:
            self._last.popitem(last=False)
        if held:
            message += f" ({held} more like this in the last {self.interval:g} s)"
        logger.log(level, message, *args)
        return True

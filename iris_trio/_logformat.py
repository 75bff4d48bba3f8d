"""Logging setup of the ``iris-trio`` processes: readable text or JSON lines.

``configure_logging(level, fmt)`` sends every log record to stderr, either as
readable text (``text``, the default) or as one JSON object per line (``json``)
for log collectors. The library itself never configures logging; only the
command line does.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Final, Literal, TextIO, get_args

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
    "parse_log_format",
    "parse_log_level",
]

#: The accepted log formats.
LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)

#: The accepted log level names (case-insensitive) and their ``logging`` levels.
LOG_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: The layout of ``text`` records.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


def parse_log_level(text: str) -> int:
    """The ``logging`` level named by ``text`` (debug, info, warning or error, any case).

    Raises:
        ValueError: ``text`` names no such level; the message lists the valid ones.
    """
    level = LOG_LEVELS.get(text.strip().lower())
    if level is None:
        raise ValueError(f"unknown log level {text!r}: use {_alternatives(list(LOG_LEVELS))}")
    return level


def parse_log_format(text: str) -> LogFormat:
    """The log format named by ``text`` (text or json, any case).

    Raises:
        ValueError: ``text`` names no such format; the message lists the valid ones.
    """
    name = text.strip().lower()
    if name == "text":
        return "text"
    if name == "json":
        return "json"
    raise ValueError(f"unknown log format {text!r}: use {_alternatives(list(LOG_FORMATS))}")


def _alternatives(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level`` (lower case),
    ``logger``, ``message``; ``exception`` (the formatted traceback) when the
    record carries one, ``stack`` when it carries stack information, and any
    ``extra=`` fields of the record (values that are not JSON become strings).
    """

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line of ``record`` (without the newline)."""
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry and not key.startswith("_"):
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def make_formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter of log format ``fmt``."""
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(
    level: int | str = logging.WARNING, fmt: str = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send the log records of this process to stderr (or ``stream``).

    Replaces the root logger's handlers with one stream handler and sets the
    root level. Returns the handler.

    Args:
        level: a ``logging`` level, or its name (debug, info, warning, error; any case).
        fmt: ``text`` (readable lines) or ``json`` (one JSON object per line).
        stream: where the records go (default: ``sys.stderr`` at the time of the call).

    Raises:
        ValueError: ``level`` or ``fmt`` is not one of the accepted values.
    """
    number = parse_log_level(level) if isinstance(level, str) else level
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(make_formatter(parse_log_format(fmt)))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(number)
    return handler

"""The limits every pattern checks its inputs against (local misuse raises a
clear, typed error before anything is sent)."""

from __future__ import annotations

import os
from typing import Final

from ..errors import ConfigError, MessageTooLargeError

__all__ = [
    "DEFAULT_HANDLER_LIMIT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SUBSCRIPTION_BUDGET",
    "DEFAULT_SUBSCRIPTION_BYTES",
    "MAX_COUNT",
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_SIZE",
    "MAX_TIMEOUT",
    "check_count",
    "check_message",
    "check_name",
    "check_size",
    "check_timeout",
]

#: Largest message of the non-tunnel patterns.
MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
#: A request with neither a cancel-scope deadline nor timeout= gives up after this.
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
#: The longest timeout= a request or tunnel opening takes (one day, in seconds).
MAX_TIMEOUT: Final = 86400.0
#: The longest cluster or topic name, in UTF-8 bytes.
MAX_NAME_LENGTH: Final = 1024
#: The most requests one member handles at once (limit=), and the largest
#: subscription buffer (capacity=), tunnel backlog and window.
MAX_COUNT: Final = 2**31 - 1
#: The largest byte bound (max_bytes=, subscription_bytes=): 2**63 - 1.
MAX_SIZE: Final = 2**63 - 1
#: Bytes one embedded subscription (or broadcast receiver) buffers unless told
#: otherwise (max_bytes=); beyond, its oldest event is dropped.
DEFAULT_SUBSCRIPTION_BYTES: Final = 16 * 1024 * 1024
#: Bytes all embedded subscriptions of one node buffer together unless told
#: otherwise (subscription_bytes=); beyond, the fullest drops its oldest event.
DEFAULT_SUBSCRIPTION_BUDGET: Final = 256 * 1024 * 1024
#: Requests a member handles at once unless told otherwise (as Iris: 4 x CPU).
DEFAULT_HANDLER_LIMIT: Final = 4 * (os.cpu_count() or 1)


def check_message(data: bytes) -> None:
    """Raise TypeError / MessageTooLargeError unless ``data`` can be sent."""
    if type(data) is not bytes:
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(f"{len(data)} bytes exceed {MAX_MESSAGE_SIZE}")


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it can name a cluster or topic; else raise.

    Raises:
        TypeError: ``name`` is not a str.
        ConfigError: it is empty or longer than MAX_NAME_LENGTH bytes (UTF-8).
    """
    if type(name) is not str:
        raise TypeError(f"a {what} name must be a str, not {type(name).__name__}")
    if not name:
        raise ConfigError(f"a {what} name must not be empty")
    if len(name) > MAX_NAME_LENGTH // 4 and len(name.encode("utf-8", "replace")) > MAX_NAME_LENGTH:
        raise ConfigError(f"a {what} name must be at most {MAX_NAME_LENGTH} bytes (UTF-8)")
    return name


def check_timeout(timeout: float | None) -> None:
    """Raise ConfigError unless ``timeout`` is None or a number of seconds in
    (0, MAX_TIMEOUT]; TypeError if it is not a number."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout <= MAX_TIMEOUT:  # NaN fails this too
        raise ConfigError(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {timeout!r}"
        )


def check_count(what: str, value: int) -> int:
    """Return ``value`` if it is an int from 1 to MAX_COUNT; else raise
    ConfigError (TypeError if it is not an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_COUNT:
        raise ConfigError(f"{what} must be at least 1 (and at most {MAX_COUNT}), not {value}")
    return value


def check_size(what: str, value: int) -> int:
    """Return ``value`` if it is an int from 1 to MAX_SIZE (a number of bytes);
    else raise ConfigError (TypeError if it is not an int)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (bytes), not {type(value).__name__}")
    if not 1 <= value <= MAX_SIZE:
        raise ConfigError(f"{what} must be at least 1 byte (and at most {MAX_SIZE}), not {value}")
    return value

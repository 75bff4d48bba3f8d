"""The relay's limits from the command line: ``iris-trio node --relay-limit
NAME=VALUE`` and ``IRIS_TRIO_RELAY_LIMITS``, in effect for relay clients, shown
in the ready line and in --help, and every mistake refused in one line with
exit status 2.

Hermetic: every node is a process of a network of the test's own (a fresh name
and key), on ephemeral ports, with discovery off.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import iris_trio
from iris_trio._command import byte_size, format_bytes
from iris_trio.crypto import NetworkKey
from iris_trio.daemon import _limit_value
from iris_trio.relay import RelayLimits

COMMAND = [sys.executable, "-m", "iris_trio.cli", "node"]
MIB = 1 << 20
DEFAULTS = dataclasses.asdict(RelayLimits())


@dataclasses.dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.ready["relay_port"])


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without IRIS_TRIO_*, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRIS_TRIO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(variables)
    return env


def hermetic(directory: Path) -> list[str]:
    """Arguments for a node of a network of its own: loopback, ephemeral ports,
    no discovery."""
    key = directory / "network.key"
    if not key.exists():
        key.write_text(base64.b64encode(NetworkKey.generate().secret).decode() + "\n")
    return [
        "--net",
        "limits-" + secrets.token_hex(6),
        "--key",
        str(key),
        "--listen",
        "127.0.0.1:0",
        "--port",
        "0",
        "--discovery",
        "off",
    ]


@contextlib.contextmanager
def daemon(directory: Path, *extra: str, **variables: str) -> Iterator[Daemon]:
    """An ``iris-trio node`` process until the block ends (then SIGTERM)."""
    process = subprocess.Popen(
        [*COMMAND, *hermetic(directory), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environment(**variables),
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 30)
        assert readable, "no ready line within 30 s"
        yield Daemon(process, json.loads(process.stdout.readline()))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def subscriptions_allowed(port: int, most: int) -> None:
    """A relay client of ``port`` holds ``most`` subscriptions, and the node
    closes its connection at the next one, saying why (the client's streams
    end with that reason)."""
    async with iris_trio.connect(port) as client, contextlib.AsyncExitStack() as held:
        first = None
        for index in range(most):
            events = await held.enter_async_context(client.subscribe(f"topic-{index}"))
            first = first or events
        assert first is not None
        with anyio.fail_after(20), pytest.raises(anyio.BrokenResourceError) as refused:
            async with client.subscribe("one-too-many") as extra:
                await extra.receive()
        reason = f"limit exceeded: more than {most} subscriptions on one connection"
        assert str(refused.value) == reason
        with pytest.raises(anyio.BrokenResourceError, match=reason):
            await first.receive()  # the whole connection was closed


# ------------------------------------------------------------------ in effect


async def test_a_node_refuses_the_subscription_beyond_its_relay_limit(tmp_path: Path) -> None:
    with daemon(tmp_path, "--relay-limit", "subscriptions=3") as node:
        assert node.ready["relay_limits"] == {**DEFAULTS, "subscriptions": 3}
        await subscriptions_allowed(node.port, 3)
        # Another client is not affected by the one that was closed.
        async with iris_trio.connect(node.port) as other, other.subscribe("news"):
            pass


async def test_the_environment_sets_limits_and_the_flag_wins_for_its_name(
    tmp_path: Path,
) -> None:
    variable = "subscriptions=2, total_buffered_bytes=128MiB,handshake_timeout=2.5"
    with daemon(
        tmp_path,
        "--relay-limit",
        "total_buffered_bytes=1GiB",
        "--relay-limit",
        "event-bytes=64KiB",  # hyphens read as underscores
        IRIS_TRIO_RELAY_LIMITS=variable,
    ) as node:
        assert node.ready["relay_limits"] == {
            **DEFAULTS,
            "subscriptions": 2,
            "total_buffered_bytes": 1024 * MIB,
            "handshake_timeout": 2.5,
            "event_bytes": 64 * 1024,
        }
        await subscriptions_allowed(node.port, 2)


def test_the_ready_line_shows_the_default_limits(tmp_path: Path) -> None:
    with daemon(tmp_path, IRIS_TRIO_RELAY_LIMITS="") as node:
        assert node.ready["relay_limits"] == DEFAULTS


# ------------------------------------------------------------------ mistakes


def refused(directory: Path, *arguments: str, **variables: str) -> str:
    """Run a node that must refuse to start: exit status 2, one line on
    stderr (returned), nothing started."""
    result = subprocess.run(
        [*COMMAND, *hermetic(directory), *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=environment(**variables),
    )
    stderr = result.stderr
    assert result.returncode == 2, (result.returncode, stderr)
    assert "Traceback" not in stderr and "InternalError" not in stderr, stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("iris-trio node: "), stderr
    assert '"event": "ready"' not in result.stdout, result.stdout
    return stderr


MISTAKES = [
    ("frobs=3", ["no relay limit is called 'frobs'", "subscriptions", "total_tunnels"]),
    ("subscription=3", ["'subscription'", "did you mean subscriptions?"]),
    ("subscriptions", ["'subscriptions' is not NAME=VALUE"]),
    ("subscriptions=", ["is not NAME=VALUE"]),
    ("=3", ["is not NAME=VALUE"]),
    ("subscriptions=abc", ["'abc' is not a whole number"]),
    ("subscriptions=1.5", ["'1.5' is not a whole number"]),
    ("subscriptions=0", ["subscriptions must be at least 1, not 0"]),
    ("event_buffer=3000000000", ["event_buffer must be at most 2147483647"]),
    ("event_bytes=4XB", ["'4XB' is not a size in bytes", "KiB, MiB or GiB"]),
    ("event_bytes=64KB", ["'64KB' is not a size in bytes"]),
    ("event_bytes=-1", ["'-1' is not a size in bytes"]),
    ("queued_bytes=0KiB", ["queued_bytes must be at least 1, not 0"]),
    ("tunnel_window=4GiB", ["tunnel_window must be at most 2147483647"]),
    ("handshake_timeout=soon", ["'soon' is not a number of seconds"]),
    ("close_timeout=0", ["close_timeout must be more than 0"]),
    ("confirm_timeout=nan", ["confirm_timeout must be more than 0"]),
]


@pytest.mark.parametrize(("setting", "expected"), MISTAKES)
def test_a_bad_relay_limit_is_one_line_and_status_2(
    tmp_path: Path, setting: str, expected: list[str]
) -> None:
    stderr = refused(tmp_path, "--relay-limit", setting)
    assert "--relay-limit" in stderr, stderr
    for text in expected:
        assert text in stderr, (text, stderr)


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("subscriptions=512,frobs=3", "IRIS_TRIO_RELAY_LIMITS 'frobs=3': no relay limit"),
        ("subscriptions=abc", "IRIS_TRIO_RELAY_LIMITS 'subscriptions=abc': 'abc' is not"),
        ("subscriptions 512", "IRIS_TRIO_RELAY_LIMITS 'subscriptions 512' is not NAME=VALUE"),
    ],
)
def test_a_bad_relay_limit_in_the_environment_names_the_variable(
    tmp_path: Path, variable: str, expected: str
) -> None:
    stderr = refused(tmp_path, IRIS_TRIO_RELAY_LIMITS=variable)
    assert expected in stderr, stderr


def test_a_bad_variable_is_refused_even_where_a_flag_sets_the_same_limit(
    tmp_path: Path,
) -> None:
    stderr = refused(
        tmp_path, "--relay-limit", "subscriptions=3", IRIS_TRIO_RELAY_LIMITS="subscriptions=x"
    )
    assert "IRIS_TRIO_RELAY_LIMITS" in stderr, stderr


# ------------------------------------------------------------------ help, sizes


def test_help_lists_every_limit_with_its_default_as_the_flag_takes_it() -> None:
    result = subprocess.run(
        [*COMMAND, "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    text = result.stdout
    assert "--relay-limit NAME=VALUE" in text
    assert "IRIS_TRIO_RELAY_LIMITS" in text
    section = text[text.index("relay limits:") :]
    for field in dataclasses.fields(RelayLimits):
        found = re.search(rf"^  {field.name}\s+(\S+)\s+\S", section, re.MULTILINE)
        assert found, (field.name, section)
        assert _limit_value(field.name, found.group(1)) == field.default, found.group(0)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("65536", 65536),
        ("64KiB", 64 * 1024),
        (" 16 MiB ", 16 * MIB),
        ("1gib", 1024 * MIB),
        ("2TiB", 2 << 40),
        ("7B", 7),
    ],
)
def test_sizes_take_binary_units(text: str, size: int) -> None:
    assert byte_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5MiB", "64KB", "64k", "-1", "MiB", "1 2"])
def test_sizes_refuse_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size in bytes"):
        byte_size(text)


@pytest.mark.parametrize("size", [1, 1000, 4096, 4 * MIB, 64 * MIB + 1, 256 * MIB, 1 << 40])
def test_sizes_are_shown_as_they_are_read(size: int) -> None:
    assert byte_size(format_bytes(size)) == size

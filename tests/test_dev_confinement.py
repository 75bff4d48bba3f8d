"""The dev network (whose key is published) stays on this host: a dev node
refuses to listen on or join through other hosts, and never dials an address of
another host that it learns from gossip or beacons."""

from __future__ import annotations

import subprocess
import sys
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import iris_trio
from iris_trio.errors import ConfigError
from iris_trio.transport.base import is_loopback


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "192.0.2.1", "example.org", ""):
        assert not is_loopback(host), host


@pytest.mark.parametrize(
    "options",
    [
        {"listen": "0.0.0.0:0"},
        {"listen": "[::]:0"},
        {"listen": "192.0.2.1:0"},
        {"seeds": ["192.0.2.1:4000"]},
        {"seeds": ["127.0.0.1:4000", "example.org:4000"]},
    ],
)
async def test_a_dev_node_refuses_other_hosts(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="the dev network is loopback only"):
        async with iris_trio.join(discovery="off", **options):
            pass  # pragma: no cover


def test_the_command_refuses_to_listen_beyond_loopback_on_the_dev_network() -> None:
    command = [sys.executable, "-m", "iris_trio.cli", "node", "--dev", "--port", "0"]
    result = subprocess.run(
        [*command, "--listen", "0.0.0.0:0", "--discovery", "off"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "the dev network is loopback only" in result.stderr
    assert "0.0.0.0" in result.stderr


class _Recording:
    """Wraps a node's transport: records the addresses dialled (and refuses the
    ones that are not on loopback, so the test itself never leaves the host)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dialled: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @asynccontextmanager
    async def connect(self, address: str, **options: Any) -> Any:
        self.dialled.append(address)
        if not is_loopback(address.rpartition(":")[0]):
            raise OSError("not dialled by the test")
        async with self.inner.connect(address, **options) as link:
            yield link


async def test_a_dev_node_never_dials_an_address_of_another_host_it_learns() -> None:
    async with iris_trio.join(discovery="off") as node:
        driver = node.driver
        recording = _Recording(driver.transport)
        driver.transport = recording
        assert driver.overlay is not None
        before = driver.statistics().dials_failed
        for number, address in enumerate(["192.0.2.7:4000", "[2001:db8::1]:4000"], start=1):
            driver.overlay.discovered(trio.current_time(), number, address)
            driver._flush()
        with trio.fail_after(10):  # the dials end (refused) as soon as they run
            while driver.statistics().dials_failed < before + 2:
                await trio.lowlevel.checkpoint()
        assert recording.dialled == []
        assert driver.statistics().dials_failed == before + 2

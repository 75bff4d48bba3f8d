"""The shell tools and the node's monitor against real ``iris-trio node``
processes: round trips (request -> reply command -> printed reply; publish ->
subscribe; broadcast), the figures after traffic, and every failure as one line
with a non-zero exit status."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

import iris_trio
from iris_trio.crypto import NetworkKey
from iris_trio.monitor import fetch
from iris_trio.tools.messaging import format_event
from iris_trio.tools.watch import render_status

COMMAND = [sys.executable, "-m", "iris_trio.cli"]


@dataclasses.dataclass
class Daemon:
    """An ``iris-trio node`` process of a network of the test's own."""

    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    network: str
    key: Path

    @property
    def port(self) -> int:
        return int(self.ready["relay_port"])

    @property
    def monitor(self) -> str:
        return str(self.ready["monitor"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def start_daemon(directory: Path, network: str, *extra: str) -> Daemon:
    """A node process on loopback: no discovery, any free ports, monitor on."""
    key = directory / "network.key"
    if not key.exists():
        key.write_text(base64.b64encode(NetworkKey.generate().secret).decode() + "\n")
    process = subprocess.Popen(
        [
            *COMMAND,
            "node",
            "--net",
            network,
            "--key",
            str(key),
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            "off",
            "--port",
            "0",
            "--monitor",
            "127.0.0.1:0",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    line = read_line(process.stdout, 30)
    return Daemon(process, json.loads(line), network, key)


def read_line(stream: IO[bytes] | None, timeout: float) -> bytes:
    """The next line of ``stream`` (a pipe), waiting ``timeout`` seconds at most."""
    assert stream is not None
    readable, _, _ = select.select([stream], [], [], timeout)
    assert readable, f"no line within {timeout} s"
    return stream.readline()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tool(
    *args: str, port: int | None = None, stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.pop("IRIS_TRIO_PORT", None)
    env.pop("IRIS_TRIO_MONITOR", None)
    if port is not None:
        env["IRIS_TRIO_PORT"] = str(port)
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, timeout=timeout, env=env, check=False
    )


def start_tool(*args: str, port: int) -> subprocess.Popen[bytes]:
    """A long-running tool (reply, subscribe); returns once it said it is ready
    (its first line on stderr)."""
    env = {**os.environ, "IRIS_TRIO_PORT": str(port)}
    process = subprocess.Popen(
        [*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    first = read_line(process.stderr, 30)
    assert b"(Ctrl-C stops)" in first, first
    return process


def stop_tool(process: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=15)
    return out, err


def one_line_error(result: subprocess.CompletedProcess[bytes], command: str) -> str:
    """Check that ``result`` failed with exactly one line on stderr; return it."""
    text = result.stderr.decode()
    assert result.returncode != 0, text
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert text.startswith(f"iris-trio {command}: "), text
    assert "Traceback" not in text and "unexpected error" not in text
    return text


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    directory = tmp_path_factory.mktemp("node")
    daemon = start_daemon(directory, "shell-" + secrets.token_hex(6))
    yield daemon
    daemon.stop()


# ------------------------------------------------------------------ round trips


def test_request_runs_the_reply_command_and_prints_its_answer(node: Daemon) -> None:
    replier = start_tool("reply", "upper", "--", "tr", "a-z", "A-Z", port=node.port)
    try:
        result = tool("request", "upper", "hello world", port=node.port)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"HELLO WORLD\n", b"")
        piped = tool("request", "upper", "-", "--raw", port=node.port, stdin=b"from\nstdin")
        assert piped.stdout == b"FROM\nSTDIN"
    finally:
        _, err = stop_tool(replier)
    assert replier.returncode == 0
    assert err.decode().strip().endswith("answered 2 requests")


def test_a_failing_reply_command_is_the_requesters_one_line_error(node: Daemon) -> None:
    script = "cat >/dev/null; echo 'no such record' >&2; exit 3"
    replier = start_tool("reply", "broken", "--", "sh", "-c", script, port=node.port)
    try:
        result = tool("request", "broken", "x", port=node.port)
    finally:
        stop_tool(replier)
    line = one_line_error(result, "request")
    assert "exited with status 3: no such record" in line


def test_a_slow_reply_command_is_a_timeout(node: Daemon) -> None:
    replier = start_tool("reply", "slow", "--", "sleep", "5", port=node.port)
    try:
        result = tool("request", "slow", "x", "--timeout", "0.5", port=node.port)
    finally:
        stop_tool(replier)
    assert "no reply from cluster 'slow' in time" in one_line_error(result, "request")


def test_subscribe_prints_what_publish_sends(node: Daemon) -> None:
    subscriber = start_tool("subscribe", "news", "--count", "3", "--json", port=node.port)
    try:
        for data in (b"first", b"two\nlines", b"\xff\x00"):
            result = tool("publish", "news", "-", port=node.port, stdin=data)
            assert result.returncode == 0, result.stderr
        out, _ = subscriber.communicate(timeout=30)
    finally:
        stop_tool(subscriber)
    assert subscriber.returncode == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events == [
        {"topic": "news", "size": 5, "text": "first"},
        {"topic": "news", "size": 9, "text": "two\nlines"},
        {"topic": "news", "size": 2, "base64": "/wA="},
    ]


def test_events_print_one_per_line_in_each_style() -> None:
    assert format_event("t", b"two\nlines", "text") == b"two\\nlines\n"
    assert format_event("t", b"\xff", "text") == b"\\xff\n"
    assert format_event("t", b"as\nis", "raw") == b"as\nis\n"
    assert json.loads(format_event("t", b"x", "json")) == {"topic": "t", "size": 1, "text": "x"}
    # What a publisher sends cannot drive the terminal (a tab stays a tab).
    assert format_event("t", b"\x1b[2J\x07a\tb\r", "text") == b"\\x1b[2J\\x07a\tb\\r\n"


def test_a_status_cannot_drive_the_terminal() -> None:
    status = {
        "node_id": "ab" * 16,
        "network": "net\x1b]0;title\x07",
        "version": "1",
        "uptime_s": 1.0,
        "joined": True,
        "address": {"listen": "127.0.0.1:1", "advertised": "127.0.0.1:1"},
        "routing_table": {"entries": 0, "filled_rows": 0},
        "leaf_set": {"right": [], "left": []},
        "rates": {"window_s": 4.0},
        "requests": dict.fromkeys(("sent", "answered", "failed", "pending", "served"), 0)
        | {"expired": 0, "refused": 0},
        "events": dict.fromkeys(("published", "broadcasts_sent", "received", "dropped"), 0)
        | {"missed": 0, "buffered": 0},
        "tunnels": dict.fromkeys(("opened", "accepted", "open", "bytes_sent"), 0)
        | {"bytes_received": 0},
        "links": {"open": 0, "bytes_sent": 0, "bytes_received": 0},
        "drops": dict.fromkeys(("link_queue_full", "routed_dropped", "tree_messages_dropped"), 0)
        | {"relay_events_dropped": None, "peers_declared_dead": 0},
        "relay": None,
        "peers": [],
        "trees": [],
    }
    screen = io.StringIO()
    Console(file=screen, force_terminal=True, width=100).print(render_status(status))
    shown = screen.getvalue()
    assert "net\\x1b]0;title\\x07" in shown and "\x1b]0" not in shown


async def test_broadcast_reaches_the_members(node: Daemon) -> None:
    async with iris_trio.register(node.port, "members") as member:
        result = await trio.run_process(
            [*COMMAND, "broadcast", "members", "hello all", "--port", str(node.port)],
            capture_stdout=True,
            capture_stderr=True,
        )
        assert result.returncode == 0, result.stderr
        with trio.fail_after(10):
            assert await member.broadcasts.receive() == b"hello all"


# ---------------------------------------------------- the figures after traffic


async def test_status_metrics_and_the_tools_count_100_requests(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "count-" + secrets.token_hex(6))
    try:

        async def serve(data: bytes) -> bytes:
            return data[::-1]

        async with (
            iris_trio.register(daemon.port, "count") as service,
            iris_trio.connect(daemon.port) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(service.serve, serve)
            for number in range(100):
                assert (
                    await client.request("count", b"%d" % number, timeout=10)
                    == (b"%d" % number)[::-1]
                )
            # The monitor samples its counters 4 times a second, on its own time.
            for _ in range(100):
                if (status := await _status(daemon))["rates"]["requests_sent"]:
                    break
                await trio.sleep(0.1)
            clients = status["relay"]["clients"]
            nursery.cancel_scope.cancel()
        metrics = (await fetch(daemon.monitor + "/metrics")).body.decode()
        health = await fetch(daemon.monitor + "/healthz")
        readable = await trio.run_process(
            [*COMMAND, "status", "--monitor", daemon.monitor], capture_stdout=True
        )
        as_json = await trio.run_process(
            [*COMMAND, "status", "--json", "--monitor", daemon.monitor], capture_stdout=True
        )
        watched = await trio.run_process(
            [*COMMAND, "top", "--count", "2", "--interval", "0.2", "--monitor", daemon.monitor],
            capture_stdout=True,
        )
    finally:
        daemon.stop()
    assert daemon.process.returncode == 0
    requests = status["requests"]
    assert (requests["sent"], requests["answered"], requests["served"]) == (100, 100, 100)
    assert requests["failed"] == requests["pending"] == 0
    assert status["rates"]["requests_sent"] > 0 and status["rates"]["requests_served"] > 0
    assert sorted(client["cluster"] or "" for client in clients) == ["", "count"]
    assert status["relay"]["port"] == daemon.port
    assert status["network"].startswith("count-")
    assert status["node_id"] == daemon.ready["node_id"]
    assert status["address"]["advertised"] == daemon.ready["address"]

    families = {family.name: family for family in text_string_to_metric_families(metrics)}
    assert families["iris_trio_requests_sent"].samples[0].value == 100
    assert families["iris_trio_requests_served"].samples[0].value == 100
    assert families["iris_trio_relay_connections_accepted"].samples[0].value >= 2
    assert health.status == 200

    text = readable.stdout.decode()
    assert status["node_id"] in text
    assert "sent 100" in text and "answered 100" in text and "served 100" in text
    assert json.loads(as_json.stdout)["requests"]["sent"] == 100
    assert watched.stdout.decode().count("iris-trio top: ") == 2


async def _status(daemon: Daemon) -> dict[str, Any]:
    page = await fetch(daemon.monitor + "/status")
    assert page.status == 200
    document: dict[str, Any] = json.loads(page.body)
    return document


def test_top_stops_quietly_when_its_reader_goes(node: Daemon) -> None:
    top = subprocess.Popen(
        [*COMMAND, "top", "--interval", "0.05", "--monitor", node.monitor],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert read_line(top.stdout, 30).startswith(b"iris-trio top: ")
        assert top.stdout is not None
        top.stdout.close()  # as `iris-trio top | head -1` does
        _, err = top.communicate(timeout=30)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
    assert top.returncode == 1 and err == b"", err.decode()[-2000:]
    by_page = tool("status", "--json", "--monitor", node.monitor + "/status")
    assert json.loads(by_page.stdout)["node_id"] == node.ready["node_id"]


def test_status_shows_the_peers_of_a_second_node(node: Daemon, tmp_path: Path) -> None:
    (tmp_path / "network.key").write_bytes(node.key.read_bytes())
    second = start_daemon(tmp_path, node.network, "--seed", node.ready["address"])
    try:
        result = tool("status", "--json", "--monitor", second.monitor)
    finally:
        second.stop()
    status = json.loads(result.stdout)
    assert status["joined"] is True
    assert [peer["id"] for peer in status["peers"]] == [node.ready["node_id"]]
    assert status["peers"][0]["address"] == node.ready["address"]


# ------------------------------------------------------------------ failures


def test_without_a_node_every_tool_says_so_in_one_line() -> None:
    port = free_port()
    for args in (
        ("request", "calc", "x"),
        ("publish", "news", "x"),
        ("broadcast", "calc", "x"),
        ("subscribe", "news"),
        ("reply", "calc", "--", "cat"),
    ):
        line = one_line_error(tool(*args, port=port), args[0])
        assert f"no node listens on port {port} (connection refused)" in line


def test_bad_ports_are_one_line_and_status_2() -> None:
    for args, variable in (
        (("--port", "70000"), None),
        (("--port", "abc"), None),
        ((), "abc"),
        ((), "0"),
    ):
        env = dict(os.environ)
        if variable is not None:
            env["IRIS_TRIO_PORT"] = variable
        result = subprocess.run(
            [*COMMAND, "request", "calc", "x", *args],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        line = one_line_error(result, "request")
        assert result.returncode == 2, line
        assert "relay port is 1 to 65535" in line


def test_requests_nobody_answers_fail_in_one_line(node: Daemon) -> None:
    line = one_line_error(tool("request", "nobody-here", "x", port=node.port), "request")
    assert "no member of cluster 'nobody-here' takes requests" in line
    line = one_line_error(tool("request", "", "x", port=node.port), "request")
    assert "cluster" in line
    missing = one_line_error(tool("reply", "x", "--", "no-such-command-here"), "reply")
    assert "'no-such-command-here' not found" in missing


def test_the_wrong_kind_of_port_is_named_in_one_line(node: Daemon) -> None:
    monitor_port = node.monitor.rsplit(":", 1)[1]
    line = one_line_error(tool("request", "calc", "x", "--port", monitor_port), "request")
    assert "relay port of an 'iris-trio node'" in line
    line = one_line_error(tool("status", "--monitor", f"127.0.0.1:{node.port}"), "status")
    assert "not a monitor" in line


def test_status_without_a_monitor_is_one_line() -> None:
    port = free_port()
    line = one_line_error(tool("status", "--monitor", f"127.0.0.1:{port}"), "status")
    assert f"no monitor at 127.0.0.1:{port} (connection refused)" in line
    assert "--monitor HOST:PORT" in line
    line = one_line_error(tool("top", "--monitor", f"127.0.0.1:{port}"), "top")
    bad = tool("status", "--monitor", "https://127.0.0.1:1")
    assert bad.returncode == 2 and "plain http://" in one_line_error(bad, "status")


def test_the_node_refuses_a_monitor_address_in_use_in_one_line(
    node: Daemon, tmp_path: Path
) -> None:
    in_use = node.monitor.removeprefix("http://")
    private = ("--net", node.network, "--key", str(node.key), "--discovery", "off")
    result = subprocess.run(
        [*COMMAND, "node", *private, "--listen", "127.0.0.1:0", "--port", "0", "--monitor", in_use],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"iris-trio node: monitor address {in_use} is in use (another node running?): "
        "use --monitor 127.0.0.1:0 for any free port\n"
    )
    bad = subprocess.run(
        [*COMMAND, "node", *private, "--monitor", "nowhere"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and b"is not HOST:PORT" in bad.stderr


async def test_malformed_http_does_not_hurt_the_node_process(node: Daemon) -> None:
    host, port = node.monitor.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"\x00\x01 not http at all\r\n\r\n")
            answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert (await fetch(node.monitor + "/healthz")).status == 200
    assert node.process.poll() is None

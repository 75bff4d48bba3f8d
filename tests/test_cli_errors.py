"""Every user mistake on the iris-trio command line gets a short, clear answer:
one or two lines on stderr naming the problem, a non-zero exit status, never a
traceback and never InternalError. Ctrl-C is quiet everywhere.

Hermetic: nodes use --port 0 and --discovery off (never the default relay port
or the shared dev network), ports held "in use" are taken by the test itself
on 127.0.0.1 port 0, and the unbindable address 10.99.99.99 only fails to bind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris_trio import cli
from iris_trio._logformat import JsonFormatter, configure_logging, parse_log_level
from iris_trio.cli import host_port, port_number
from iris_trio.errors import InternalError

COMMAND = [sys.executable, "-m", "iris_trio.cli"]
NODE = ["node", "--dev", "--discovery", "off"]


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without IRIS_TRIO_*, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRIS_TRIO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(variables)
    return env


def run(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=environment(**variables),
    )


def assert_refused(result: subprocess.CompletedProcess[str], status: int, *expected: str) -> None:
    """Exit ``status``; one or two lines on stderr that contain ``expected``."""
    stderr = result.stderr
    assert result.returncode == status, (result.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    assert "InternalError" not in stderr, stderr
    assert 1 <= len(stderr.strip().splitlines()) <= 2, stderr
    for text in expected:
        assert text in stderr, (text, stderr)
    assert '"event": "ready"' not in result.stdout, result.stdout


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held by a listening socket on 127.0.0.1 (taken at random)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


# ------------------------------------------------------------- ports, addresses


def test_relay_port_in_use(busy_port: int) -> None:
    result = run(*NODE, "--port", str(busy_port))
    assert_refused(result, 1, f"relay port {busy_port} is in use", "--port 0")


def test_link_listen_address_in_use(busy_port: int) -> None:
    result = run(*NODE, "--port", "0", "--listen", f"127.0.0.1:{busy_port}")
    assert_refused(result, 1, f"127.0.0.1:{busy_port} is in use", "--listen 127.0.0.1:0")


def test_listen_address_not_of_this_host() -> None:
    result = run(*NODE, "--port", "0", "--listen", "10.99.99.99:0")
    assert_refused(result, 1, "10.99.99.99:0", "not one of this host's")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--listen", "nonsense"], ["--listen", "'nonsense' is not HOST:PORT"]),
        (["--listen", "127.0.0.1:99999"], ["--listen", "99999", "out of range"]),
        (["--listen", "127.0.0.1:http"], ["--listen", "'http'", "not a port number"]),
        (["--listen", "::1:0"], ["--listen", "brackets"]),
        (["--port", "70000"], ["--port", "70000 is out of range", "0 to 65535"]),
        (["--port", "-1"], ["--port", "-1 is out of range"]),
        (["--port", "abc"], ["--port", "'abc' is not a port number"]),
        (["--seed", "127.0.0.1"], ["--seed", "not HOST:PORT"]),
        (["--seed", "127.0.0.1:0"], ["--seed", "port 0"]),
        (["--status-interval", "-1"], ["--status-interval", "positive number of seconds"]),
        (["--status-interval", "nan"], ["--status-interval"]),
        (["--log-level", "loud"], ["--log-level", "'loud'", "debug, info, warning or error"]),
        (["--log-format", "xml"], ["--log-format", "'xml'", "text or json"]),
        (["--discovery", "bogus"], ["--discovery", "'bogus'", "loopback, lan or off"]),
        (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ],
)
def test_invalid_flag_values_are_refused_before_anything_starts(
    arguments: list[str], expected: list[str]
) -> None:
    result = run(*NODE, *arguments)
    assert_refused(result, 2, *expected)
    assert "dev network" not in result.stderr  # refused before the node started


@pytest.mark.parametrize("level", ["DEBUG", "Info", "warning", "ERROR"])
def test_log_levels_are_case_insensitive(level: str) -> None:
    assert parse_log_level(level) == getattr(logging, level.upper())


# ------------------------------------------------------------- networks, files


def test_lan_discovery_on_the_dev_network() -> None:
    result = run("node", "--dev", "--port", "0", "--discovery", "lan")
    assert_refused(result, 2, "--discovery lan", "real network", "loopback or off")


def test_dev_and_net_exclude_each_other() -> None:
    assert_refused(run("node", "--dev", "--net", "prod"), 2, "--dev and --net")


def test_a_key_without_a_network(tmp_path: Path) -> None:
    assert_refused(run("node", "--key", str(tmp_path / "k")), 2, "--key", "--net NAME")


def test_a_network_without_a_key() -> None:
    assert_refused(run("node", "--net", "prod"), 2, "'prod' needs its key", "--key FILE")


def test_missing_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    result = run("node", "--net", "prod", "--key", str(missing), "--port", "0")
    assert_refused(result, 1, str(missing), "no such file", "iris-trio keygen")


def test_unreadable_key_file(tmp_path: Path) -> None:
    result = run("node", "--net", "prod", "--key", str(tmp_path), "--port", "0")
    assert_refused(result, 1, str(tmp_path), "cannot read it")


def test_invalid_key_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key at all\n")
    result = run("node", "--net", "prod", "--key", str(bad), "--port", "0")
    assert_refused(result, 1, str(bad), "not a network key")


def test_invalid_rsa_key_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN NOTHING-----\n")
    result = run("node", "--net", "prod", "--rsa", str(bad), "--port", "0")
    assert_refused(result, 1, str(bad), "RSA private key")


def test_identity_file_that_is_not_an_identity(tmp_path: Path) -> None:
    bad = tmp_path / "node.id"
    bad.write_text("hello\n")
    result = run(*NODE, "--port", "0", "--identity", str(bad))
    assert_refused(result, 1, str(bad), "not an identity file")
    assert bad.read_text() == "hello\n"  # never overwritten


def test_identity_file_that_cannot_be_created(tmp_path: Path) -> None:
    path = tmp_path / "no-such-directory" / "node.id"
    result = run(*NODE, "--port", "0", "--identity", str(path))
    assert_refused(result, 1, str(path), "cannot create it")


def test_keygen_into_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no-such-directory" / "net.key"
    assert_refused(run("keygen", str(path)), 1, str(path), "cannot create")


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "net.key"
    path.write_text("precious\n")
    assert_refused(run("keygen", str(path)), 1, "exists", "refusing to overwrite")
    assert path.read_text() == "precious\n"


# ------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("IRIS_TRIO_PORT", "abc", "not a port number"),
        ("IRIS_TRIO_PORT", "70000", "out of range"),
        ("IRIS_TRIO_DISCOVERY", "bogus", "loopback, lan or off"),
        ("IRIS_TRIO_STATUS_INTERVAL", "-1", "positive number of seconds"),
        ("IRIS_TRIO_STATUS_INTERVAL", "often", "not a number of seconds"),
        ("IRIS_TRIO_LOG_LEVEL", "loud", "debug, info, warning or error"),
        ("IRIS_TRIO_LOG_FORMAT", "xml", "text or json"),
        ("IRIS_TRIO_DEV", "maybe", "yes/no"),
        ("IRIS_TRIO_LISTEN", "nonsense", "not HOST:PORT"),
        ("IRIS_TRIO_SEEDS", "127.0.0.1:1,oops", "not HOST:PORT"),
    ],
)
def test_invalid_environment_values_are_refused(variable: str, value: str, expected: str) -> None:
    hermetic = {"IRIS_TRIO_PORT": "0", "IRIS_TRIO_DISCOVERY": "off"}  # should it start
    result = run("node", **(hermetic | {variable: value}))
    assert_refused(result, 2, f"{variable}:", expected)


def test_a_flag_on_the_command_line_wins_over_its_variable(busy_port: int) -> None:
    result = run(*NODE, "--port", "70000", IRIS_TRIO_PORT="0")
    assert_refused(result, 2, "--port", "70000")
    result = run(*NODE, "--port", str(busy_port), IRIS_TRIO_PORT="0")
    assert_refused(result, 1, f"relay port {busy_port} is in use")


def test_environment_conflict_names_the_variable() -> None:
    result = run("node", IRIS_TRIO_DEV="yes", IRIS_TRIO_NET="prod")
    assert_refused(result, 2, "IRIS_TRIO_DEV and IRIS_TRIO_NET exclude each other")


def test_lan_discovery_from_the_environment_on_the_dev_network() -> None:
    result = run("node", "--dev", "--port", "0", IRIS_TRIO_DISCOVERY="lan")
    assert_refused(result, 2, "IRIS_TRIO_DISCOVERY lan", "loopback or off")


# ------------------------------------------------------------- other commands


def test_unknown_command_and_scenario() -> None:
    assert_refused(run("nosuch"), 2, "unknown command 'nosuch'", "node")
    assert_refused(run("bench", "nosuch"), 2, "unknown scenario 'nosuch'", "link")


@pytest.mark.parametrize(
    "arguments",
    [
        ["demo", "--seconds", "0"],
        ["demo", "--nodes", "2"],
        ["demo", "--size", "lots"],
        ["bench", "link", "--size", "0"],
        ["bench", "overlay", "--nodes", "1"],
        ["bench", "request", "--duration", "-1"],
        ["bench", "pubsub", "--size", "4"],
        ["bench", "relay", "--operations", "5"],
        ["bench", "peers", "--runs", "zero"],
    ],
)
def test_invalid_demo_and_bench_arguments(arguments: list[str]) -> None:
    result = run(*arguments)
    assert_refused(result, 2, arguments[-2])


# ------------------------------------------------------------- --help


def assert_plain_help(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # whatever the terminal's width
    assert "``" not in text and ":func:" not in text and ":mod:" not in text, text
    for flag in expected:
        assert flag in text, (flag, text)


def test_node_help_is_plain_and_explains_every_flag() -> None:
    result = run("node", "--help")
    assert_plain_help(
        result,
        "--dev",
        "--net NAME",
        "--key FILE",
        "--rsa FILE",
        "--listen HOST:PORT",
        "--port N",
        "--seed HOST:PORT",
        "--discovery MODE",
        "--identity FILE",
        "--status-interval SECONDS",
        "--log-level LEVEL",
        "--log-format FORMAT",
        "default warning",
        "exits with status 0",
        "IRIS_TRIO_LOG_FORMAT",
    )


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["keygen"],
        *[
            ["bench", s]
            for s in ("link", "overlay", "pubsub", "request", "broadcast", "tunnel", "relay")
        ],
        ["bench", "peers"],
        ["bench", "report"],
    ],
)
def test_help_texts_are_plain(command: list[str]) -> None:
    result = run(*command, "--help")
    assert_plain_help(result)
    if command[0] in {"demo", "bench"}:
        assert "130" in result.stdout
    lines = result.stdout.splitlines()
    options = lines[lines.index("options:") + 1 :]
    options = options[: options.index("")] if "" in options else options
    for number, line in enumerate(options):  # every option has its explanation
        if line.startswith("  -") and "  " not in line.strip():
            assert options[number + 1].startswith(" " * 10), line


def test_bench_help_lists_the_scenarios() -> None:
    result = run("bench", "--help")
    assert_plain_help(result, "link", "overlay", "peers", "report", "130")


# ------------------------------------------------------------- Ctrl-C


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )


def wait_ready(process: subprocess.Popen[str]) -> dict[str, object]:
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        record: dict[str, object] = json.loads(line)
        if record.get("event") == "ready":
            return record
    process.kill()
    raise AssertionError(f"no ready line: {process.communicate()[1]}")


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_node_stops_gracefully_on_a_signal(sent: signal.Signals) -> None:
    process = start(*NODE, "--port", "0")
    try:
        wait_ready(process)
        process.send_signal(sent)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert '"event": "stopped"' in stdout


def test_node_logs_json_lines_for_log_collectors() -> None:
    process = start(*NODE, "--port", "0", "--log-format", "JSON", "--log-level", "INFO")
    try:
        ready = wait_ready(process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]
    assert records, "info level logs at least the relay's port"
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert record["time"].endswith("Z") and "T" in record["time"]
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}
    assert any(str(ready["relay_port"]) in r["message"] for r in records), records


def test_demo_exits_130_on_ctrl_c() -> None:
    process = start("demo", "--seconds", "30")
    assert process.stdout is not None
    try:
        assert process.stdout.readline()  # it runs
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "iris-trio demo: interrupted" in stderr


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (started from any of its threads)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_bench_link_exits_130_on_ctrl_c_and_stops_its_receiver() -> None:
    process = start("bench", "link", "--frames", "10000000", "--runs", "1")
    try:
        deadline = time.monotonic() + 20
        while not children(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        receivers = children(process.pid)
        assert receivers, "the benchmark started no receiver"
        time.sleep(1.5)  # the receiver runs; the frames flow
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "iris-trio bench link: interrupted" in stderr
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in receivers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in receivers), "the receiver process was left behind"


def test_bench_overlay_exits_130_on_ctrl_c() -> None:
    process = start("bench", "overlay", "--nodes", "2000")
    try:
        time.sleep(2.5)  # well into the simulation (it takes minutes)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "iris-trio bench overlay: interrupted" in stderr


# ------------------------------------------------------------- pieces, in process


def test_json_formatter_writes_one_object_per_line_with_the_exception() -> None:
    stream = io.StringIO()
    handler = configure_logging("info", "json", stream=stream)
    try:
        log = logging.getLogger("iris_trio.test")
        log.debug("hidden")
        log.info("peer %s joined", "abc", extra={"peer": "abc"})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("it failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "peer abc joined" and first["peer"] == "abc"
    assert first["level"] == "info" and first["logger"] == "iris_trio.test"
    assert "ValueError: boom" in second["exception"] and "Traceback" in second["exception"]
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_configure_logging_refuses_unknown_values() -> None:
    with pytest.raises(ValueError, match="debug, info, warning or error"):
        configure_logging("loud", "text")
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("info", "xml")


@pytest.mark.parametrize(
    ("text", "good"),
    [
        ("127.0.0.1:0", True),
        ("[::1]:4000", True),
        ("example.org:65535", True),
        ("0.0.0.0:65536", False),
        (":4000", False),
        ("[]:4000", False),
        ("127.0.0.1", False),
        ("::1", False),
    ],
)
def test_host_port(text: str, good: bool) -> None:
    if good:
        assert host_port(text) == text
    else:
        with pytest.raises(Exception, match=r"HOST:PORT|out of range|port number"):
            host_port(text)


def test_port_number_bounds() -> None:
    assert port_number("0") == 0 and port_number("65535") == 65535
    for bad in ("-1", "65536", "x", "1.5"):
        with pytest.raises(Exception, match=r"out of range|not a port number"):
            port_number(bad)


def test_an_unexpected_error_is_two_lines_and_asks_for_a_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(argv: list[str]) -> int:
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            raise ExceptionGroup("nursery", [InternalError("the node failed")]) from exc

    def failing(argv: list[str]) -> int:
        raise InternalError("the node failed") from RuntimeError("boom")

    monkeypatch.delenv("IRIS_TRIO_TRACEBACK", raising=False)
    for command in (broken, failing):
        monkeypatch.setitem(cli._COMMANDS, "node", (command, "a broken command"))
        assert cli.main(["node"]) == 1
        stderr = capsys.readouterr().err
        assert "iris-trio node: unexpected error" in stderr
        assert "please report" in stderr
        assert "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 2
    assert "RuntimeError: boom" in stderr  # the cause, not the wrapper
    monkeypatch.setenv("IRIS_TRIO_TRACEBACK", "1")
    assert cli.main(["node"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_before_a_command_starts_is_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(argv: list[str]) -> int:
        raise BaseExceptionGroup("nursery", [KeyboardInterrupt()])

    monkeypatch.setitem(cli._COMMANDS, "demo", (interrupted, "interrupted at once"))
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err == "iris-trio demo: interrupted\n"

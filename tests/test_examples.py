"""Every example runs, quickly, and prints what it promises.

The documentation includes these files (``literalinclude``) rather than
copies, so what the pages show is what runs here. Each example is hermetic:
its nodes find each other by address (``discovery="off"``, ephemeral ports on
loopback), on a network of their own or the in-memory one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris_trio.crypto import NetworkKey

EXAMPLES = Path(__file__).parent.parent / "examples"

#: Each example, and lines its output must contain.
EXPECTED: dict[str, list[str]] = {
    "pubsub_ticker.py": ["alice got IRIS 100.00", "bob got IRIS 109.00"],
    "broadcast_chat.py": ["ann heard: hello, cluster", "cat heard: exactly once, in order"],
    "request_echo.py": [
        "echoes hello",
        "remote error:",
        "refuses to explode",
        "no responders in cluster 'nobody-here'",
    ],
    "tunnel_copy.py": ["member wrote 20,971,520 bytes", "digests match"],
    "tutorial_1_service.py": ["2 3 4 -> 9", "40 2 -> 42", "1 1 1 1 -> 4"],
    "tutorial_2_client.py": [
        "reply: 42",
        "remote error: ValueError: invalid literal for int()",
        "no responders: nobody serves 'nobody'",
        "timed out: 'slow' did not answer within 0.5 s",
        "20 concurrent replies, all right: True",
    ],
    "tutorial_3_pubsub.py": [
        "auditor saw 1 2 = 3",
        "auditor saw 5 6 = 11",
        "ann heard the broadcast: closing time",
        "bob heard the broadcast: closing time",
    ],
    "tutorial_4_tunnel.py": [
        "client: 100 totals in order, the last 5050",
        "member: the client closed the tunnel; total 5050",
    ],
    "tutorial_5_processes.py": [
        "3 member processes serve 'calc'",
        "30 requests answered by",
        "the members have left",
    ],
    "tutorial_6_real_network.py": [
        "client: 2 2 -> 4",
        "a node with another key: no responders",
        "same node id after a restart: True",
    ],
    "tutorial_7_testing.py": ["4 passed"],
    "kv_partitioned.py": ["partitioned kv: 20 of 20 reads saw their write"],
}


def run_example(script: str, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str) -> None:
    output = run_example(script)
    for line in EXPECTED[script]:
        assert line in output, output
    lines = output.splitlines()
    assert len(lines) == len(set(lines))  # nothing delivered twice


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[int]:
    """An ``iris-trio node`` of a network of its own (no discovery, any free
    ports on loopback); its relay port."""
    key = tmp_path / "network.key"
    key.write_bytes(NetworkKey.generate().secret.hex().encode())
    command = [sys.executable, "-m", "iris_trio.cli", "node", "--net", "examples-relay"]
    command += ["--key", str(key), "--discovery", "off", "--port", "0"]
    command += ["--listen", "127.0.0.1:0"]
    node = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert node.stdout is not None
        ready = json.loads(node.stdout.readline())
        assert ready["event"] == "ready", ready
        yield int(ready["relay_port"])
    finally:
        node.terminate()
        node.wait(timeout=30)


def test_relay_asyncio_example(relay_port: int) -> None:
    output = run_example("relay_asyncio.py", str(relay_port))
    for line in (
        "reply: HELLO FROM ASYNCIO",
        "no responders for 'nobody'",
        "event: relay events work",
        "echo: through a tunnel",
    ):
        assert line in output, output


def test_examples_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for example in sorted(path.name for path in EXAMPLES.glob("*.py")):
        assert f"`{example}`" in readme, f"examples/README.md does not list {example}"
    listed = {*EXPECTED, "relay_asyncio.py"}
    assert listed == {path.name for path in EXAMPLES.glob("*.py")}, "an example is not run"


def test_no_example_uses_the_shared_discovery() -> None:
    # Tests stay hermetic: every example that joins a TCP overlay says how
    # its nodes find each other (by address), never the dev network's beacons.
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        if "iris_trio.join(" in text:
            assert 'discovery="off"' in text, path.name

"""Every example runs, quickly, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("pubsub_ticker.py", ["alice got IRIS 100.00", "bob got IRIS 109.00"]),
        ("broadcast_chat.py", ["ann heard: hello, cluster", "cat heard: exactly once, in order"]),
        (
            "request_echo.py",
            [
                "echoes hello",
                "remote error:",
                "refuses to explode",
                "no responders in cluster 'nobody-here'",
            ],
        ),
        ("tunnel_copy.py", ["member wrote 20,971,520 bytes", "digests match"]),
    ],
)
def test_example_runs(script: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout, result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == len(set(lines))  # nothing delivered twice

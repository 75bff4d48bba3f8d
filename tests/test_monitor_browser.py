"""The dashboard in a real browser (headless Chromium driven by Selenium): it
draws the ring with the node's peers and its rate charts move with traffic.

Skipped, saying why, where Chromium or its driver is not installed (Debian:
``apt-get install chromium chromium-driver``; .ci/run installs them)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from iris_trio.monitor import fetch

from .test_shell import Daemon, start_daemon, start_tool, stop_tool

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
)

#: Requests through the first node's relay, to a member on the third, until killed.
TRAFFIC = textwrap.dedent(
    """
    import sys, trio, iris_trio
    async def main(port):
        async with iris_trio.connect(port) as client:
            while True:
                await client.request("echo", b"ping", timeout=10)
                await trio.sleep(0.005)
    trio.run(main, int(sys.argv[1]))
    """
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # selenium reports nothing anywhere
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_peers(daemon: Daemon, count: int) -> None:
    async def peers() -> None:
        with trio.fail_after(30):
            while True:
                status = json.loads((await fetch(daemon.monitor + "/status")).body)
                if len(status["peers"]) == count and status["joined"]:
                    return
                await trio.sleep(0.1)  # nothing to wait on in another process

    trio.run(peers)


def test_the_dashboard_draws_the_ring_and_live_rates(browser: Any, tmp_path: Path) -> None:
    network = "browser-" + secrets.token_hex(6)
    first = start_daemon(tmp_path, network)
    others = [start_daemon(tmp_path, network, "--seed", first.ready["address"]) for _ in range(2)]
    replier = traffic = None
    try:
        wait_for_peers(first, 2)
        browser.get(first.monitor + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "ring").get_attribute("data-peers") == "2")
        dots = browser.find_elements(By.CSS_SELECTOR, "#ring circle.leaf, #ring circle.peer")
        assert sorted(dot.get_attribute("data-id") for dot in dots) == sorted(
            daemon.ready["node_id"] for daemon in others
        )
        assert len(browser.find_elements(By.CSS_SELECTOR, "#ring line.link")) == 2
        assert browser.find_element(By.ID, "node-id").text == first.ready["node_id"]
        assert browser.find_element(By.ID, "joined").text == "joined"
        assert browser.find_element(By.ID, "rate-requests_sent").text == "0"

        replier = start_tool("reply", "echo", "--", "cat", port=others[1].port)
        traffic = subprocess.Popen(
            [sys.executable, "-c", TRAFFIC, str(first.port)], env=dict(os.environ)
        )
        wait.until(lambda b: b.find_element(By.ID, "rate-requests_sent").text not in ("", "0"))
        updates = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-updates"))
        wait.until(
            lambda b: (
                int(b.find_element(By.TAG_NAME, "body").get_attribute("data-updates"))
                >= updates + 4
            )
        )
        chart = browser.find_element(By.CSS_SELECTOR, '.chart[data-rate="requests_sent"]')
        assert int(chart.get_attribute("data-points")) > 4
        assert browser.find_element(By.ID, "connection").text == "live"
        screenshot = Path(os.environ.get("IRIS_TRIO_DASHBOARD_SCREENSHOT", tmp_path / "d.png"))
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
    finally:
        if traffic is not None:
            traffic.kill()
            traffic.wait()
        if replier is not None:
            stop_tool(replier)
        for daemon in (first, *others):
            daemon.stop()

"""The monitor: /healthz, /status, /metrics and the dashboard's files over real
HTTP on loopback, the figures they show, and bad requests that never hurt the node."""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import iris_trio
from iris_trio.monitor import (
    HttpLimits,
    Monitor,
    MonitorAddressError,
    RateMeter,
    fetch,
    monitor_of,
    monitor_url,
    serve_monitor,
)
from iris_trio.monitor.snapshot import node_status
from iris_trio.overlay.config import OverlayConfig
from iris_trio.overlay.node import OverlayNode, Send
from iris_trio.patterns.requester import DIRECT_EXPLORE
from iris_trio.relay import serve_relay
from iris_trio.testing import open_cluster

from .helpers_cluster import private_discovery
from .relay_helpers import hermetic_network


async def echo(data: bytes) -> bytes:
    return data


# ------------------------------------------------------------------ rates


def test_rates_are_growth_per_second_over_the_window() -> None:
    meter = RateMeter(window=2.0, samples=5)
    assert meter.rates() == {}
    meter.record(0.0, {"sent": 0})
    assert meter.rates() == {"sent": 0.0}
    for second in range(1, 5):
        meter.record(float(second), {"sent": 10 * second * second})
    # over the last 2 s: from 40 (t=2) to 160 (t=4)
    assert meter.rates() == {"sent": 60.0}
    meter.record(5.0, {"sent": 3})  # a counter that went down (a restart): no rate
    assert meter.rates() == {"sent": 0.0}
    with pytest.raises(ValueError, match="time order"):
        meter.record(4.0, {"sent": 4})
    with pytest.raises(ValueError):
        RateMeter(window=0)
    with pytest.raises(ValueError):
        RateMeter(samples=1)


def test_monitor_addresses_are_read_or_refused_in_words() -> None:
    assert monitor_url("8222") == "http://127.0.0.1:8222"
    assert monitor_url("[::1]:9000/") == "http://[::1]:9000"
    assert monitor_url("http://localhost:1/") == "http://localhost:1"
    assert monitor_url(" http://127.0.0.1:55556/status ") == "http://127.0.0.1:55556"
    for bad in ("https://x:1", "x", "x:0", "x:99999", "x:port"):
        with pytest.raises(ValueError):
            monitor_url(bad)


def test_the_round_trip_time_of_a_peer_is_that_of_its_acknowledged_hops() -> None:
    config = OverlayConfig()
    a, b = OverlayNode(1 << 120, "a:1", config=config), OverlayNode(2 << 120, "b:1", config=config)
    a.connected(0.0, b.id, "b:1")
    b.connected(0.0, a.id, "a:1")
    a.take_effects()
    b.take_effects()
    assert a.peer_rtt(b.id) is None  # nothing measured yet
    a.route(1.0, b.id, b"question")
    (route,) = [e.frame for e in a.take_effects() if isinstance(e, Send)]
    b.received(1.01, a.id, route)
    b.route(1.02, a.id, b"answer")  # the acknowledgement rides on it
    (answer,) = [e.frame for e in b.take_effects() if isinstance(e, Send)]
    a.received(1.03, b.id, answer)
    assert a.peer_rtt(b.id) == pytest.approx(0.03)
    assert a.peer_rtt(12345) is None  # not a peer


# ------------------------------------------------------ the figures (virtual time)


async def test_status_shows_peers_trees_and_counters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(4) as nodes, trio.open_nursery() as nursery:
        sender, member = nodes[0], nodes[3]
        await nursery.start(member.serve, echo, "calc")
        async with member.subscribe("news"):
            for _ in range(100):
                assert await sender.request("calc", b"x", timeout=5) == b"x"
            sent = node_status(sender, uptime=1.0, rates={}, window=4.0)
            served = node_status(member, uptime=1.0, rates={}, window=4.0)
            everyone = [node_status(n, uptime=1.0, rates={}, window=4.0) for n in nodes]
        nursery.cancel_scope.cancel()
    assert sent["requests"]["sent"] == sent["requests"]["answered"] == 100
    assert sent["requests"]["failed"] == sent["requests"]["pending"] == 0
    assert served["requests"]["served"] == 100
    assert served["node_id"] == f"{member.driver.id:032x}"
    assert served["version"] == iris_trio.__version__
    assert served["joined"] is True
    assert served["relay"] is None
    assert served["events"]["missed"] is None or served["events"]["missed"] == 0
    assert len(served["peers"]) == 3
    for peer in served["peers"]:
        assert peer["leaf"] is True
        assert peer["link_age_s"] >= 0 and peer["queued_bytes"] >= 0
        assert peer["rtt_ms"] is None or peer["rtt_ms"] >= 0  # None until measured
    assert (served["clusters"], served["topics"]) == (["calc"], ["news"])
    trees = {(tree["kind"], tree["name"]) for tree in served["trees"] if tree["member"]}
    assert trees == {("cluster", "calc"), ("topic", "news")}
    # each tree has exactly one root among the nodes, and its children are peers
    for name in ("calc", "news"):
        roots = [
            status
            for status in everyone
            for tree in status["trees"]
            if tree["root"] and (tree["name"] == name or tree["id"] == _tree_id(served, name))
        ]
        assert len(roots) == 1
    assert served["leaf_set"]["per_side"] == 8
    assert served["routing_table"]["entries"] >= 1


def _tree_id(status: dict[str, Any], name: str) -> str:
    return str(next(tree["id"] for tree in status["trees"] if tree["name"] == name))


# ------------------------------------------------------------ over HTTP


@asynccontextmanager
async def monitored_pair(
    limits: HttpLimits | None = None,
) -> AsyncIterator[tuple[iris_trio.Node, Monitor, iris_trio.Node, Monitor]]:
    """Two real-TCP nodes of a network of their own, each with its monitor
    (the first also serves the relay); the second is a member of "calc"."""
    network = hermetic_network()
    async with (
        iris_trio.join(network=network, listen="127.0.0.1:0", discovery="off") as first,
        iris_trio.join(
            network=network,
            listen="127.0.0.1:0",
            discovery="off",
            seeds=[first.address],
            monitor="127.0.0.1:0",
        ) as second,
        trio.open_nursery() as nursery,
    ):
        relay = await nursery.start(serve_relay, first, 0)
        one: Monitor = await nursery.start(
            lambda task_status: serve_monitor(
                first, relay=relay, limits=limits, task_status=task_status
            )
        )
        two = monitor_of(second)  # the node's own (embedded) monitor
        assert two is not None
        await nursery.start(second.serve, echo, "calc")
        await first.wait_joined()
        await second.wait_joined()
        yield first, one, second, two
        nursery.cancel_scope.cancel()


async def get_json(url: str) -> dict[str, Any]:
    page = await fetch(url)
    assert page.status == 200, page.body
    assert page.headers["content-type"] == "application/json"
    document = json.loads(page.body)
    assert isinstance(document, dict)
    return document


async def test_the_figures_move_with_traffic_in_status_and_metrics() -> None:
    async with monitored_pair() as (first, one, _, two):
        before = await get_json(one.url + "/status")
        assert before["requests"] == {
            "sent": 0,
            "answered": 0,
            "failed": 0,
            "pending": 0,
            "direct": 0,
            "received": 0,
            "served": 0,
            "expired": 0,
            "refused": 0,
        }
        for _ in range(100):
            assert await first.request("calc", b"2+2", timeout=5) == b"2+2"
        one.sample()
        two.sample()
        status = await get_json(one.url + "/status")
        served = await get_json(two.url + "/status")
        page = await fetch(one.url + "/metrics")
    assert status["requests"]["sent"] == status["requests"]["answered"] == 100
    # Sequential requests to one member: the first through the tree, then all go
    # straight to it but one in DIRECT_EXPLORE, at most one each 10 ms.
    assert 100 - 1 - 100 // DIRECT_EXPLORE <= status["requests"]["direct"] <= 99
    assert served["requests"]["served"] == 100
    assert status["rates"]["requests_sent"] > 0
    assert status["rates"]["link_bytes_sent"] > 0
    assert served["rates"]["requests_served"] > 0
    assert [peer["id"] for peer in status["peers"]] == [served["node_id"]]
    assert status["network"] == served["network"]
    assert status["relay"]["port"] > 0 and status["relay"]["clients"] == []
    assert any(tree["name"] == "calc" and tree["member"] for tree in served["trees"])

    assert page.status == 200
    assert page.headers["content-type"].startswith("text/plain; version=")
    families = {
        family.name: family for family in text_string_to_metric_families(page.body.decode())
    }
    assert all(name.startswith("iris_trio_") for name in families)

    def value(name: str, **labels: str) -> float:
        for sample in families[name].samples:
            if sample.labels == labels and not sample.name.endswith("_created"):
                return float(sample.value)
        raise AssertionError(f"no sample {name}{labels}")

    assert value("iris_trio_requests_sent") == 100.0  # the parser drops _total
    assert families["iris_trio_requests_sent"].type == "counter"
    assert value("iris_trio_requests_answered") == 100.0
    assert value("iris_trio_requests_direct") == status["requests"]["direct"]
    assert value("iris_trio_peers") == 1.0
    assert value("iris_trio_joined") == 1.0
    assert value("iris_trio_relay_connections_open") == 0.0
    assert value("iris_trio_tunnel_bytes", direction="sent") == 0.0
    info = families["iris_trio_node_info"].samples[0].labels
    assert info["node_id"] == status["node_id"]
    assert info["version"] == iris_trio.__version__


async def test_metrics_speak_openmetrics_when_asked() -> None:
    async with monitored_pair() as (_, one, _, _):
        page = await fetch(one.url + "/metrics", accept="application/openmetrics-text")
    assert page.headers["content-type"].startswith("application/openmetrics-text")
    assert page.body.rstrip().endswith(b"# EOF")


async def test_healthz_says_joining_until_the_node_has_joined() -> None:
    # Alone with discovery on, a node waits ~2 s for neighbours before it counts as joined.
    async with (
        iris_trio.join(
            network=hermetic_network(), listen="127.0.0.1:0", discovery=private_discovery()
        ) as node,
        trio.open_nursery() as nursery,
    ):
        monitor: Monitor = await nursery.start(serve_monitor, node)
        early = await fetch(monitor.url + "/healthz")
        await node.wait_joined()
        late = await fetch(monitor.url + "/healthz")
        nursery.cancel_scope.cancel()
    assert early.status == 503
    assert early.body.startswith(b"joining: ")
    assert late.status == 200
    assert late.body == b"ok: joined, 0 peers\n"


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` raw and read until the server closes (5 s at most)."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
            return answer


async def test_bad_requests_get_their_4xx_and_the_node_goes_on() -> None:
    async with monitored_pair() as (first, one, _, _):
        port = one.port
        assert (await exchange(port, b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400 Bad Request")
        assert (await exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")).startswith(
            b"HTTP/1.1 400"
        )  # a TLS hello
        huge = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await exchange(port, huge)).startswith(b"HTTP/1.1 431")
        body = b"x" * 70000
        post = b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)
        assert (await exchange(port, post + body)).startswith(b"HTTP/1.1 413")
        put = b"PUT /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
        put += b"Connection: close\r\n\r\n"
        answer = await exchange(port, put)
        assert answer.startswith(b"HTTP/1.1 405") and b"allow: get, head" in answer.lower()
        head = b"HEAD /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        answer = await exchange(port, head)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n")
        missing = await fetch(one.url + "/nothing")
        assert missing.status == 404 and b"/status" in missing.body
        # two requests on one connection (keep-alive), then the node still answers
        twice = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2
        twice += b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        assert (await exchange(port, twice)).count(b"HTTP/1.1 200 OK") == 3
        assert (await fetch(one.url + "/healthz")).status == 200
        assert await first.request("calc", b"still", timeout=5) == b"still"


async def test_a_loopback_monitor_answers_only_for_loopback_host_names() -> None:
    # A web page that rebinds its own name to 127.0.0.1 cannot read the figures.
    async with monitored_pair() as (_, one, _, _):
        for host, status in (
            (b"evil.example", b"403"),
            (b"evil.example:8080", b"403"),
            (b"127.0.0.1.nip.io", b"403"),
            (b"localhost:%d" % one.port, b"200"),
            (b"127.0.0.1", b"200"),
        ):
            request = b"GET /status HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host
            answer = await exchange(one.port, request)
            assert answer.startswith(b"HTTP/1.1 " + status), (host, answer[:200])
        old = await exchange(one.port, b"GET /healthz HTTP/1.0\r\n\r\n")  # no Host at all
        assert old.startswith(b"HTTP/1.1 200")


async def test_connections_beyond_the_limit_are_closed_on_arrival() -> None:
    async with monitored_pair(HttpLimits(connections=2, idle_timeout=5)) as (_, one, _, _):
        idle = [await trio.open_tcp_stream("127.0.0.1", one.port) for _ in range(2)]
        await idle[0].send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await idle[0].receive_some(4096)).startswith(b"HTTP/1.1 200")  # both are in
        assert await exchange(one.port, b"GET /healthz HTTP/1.1\r\n\r\n") == b""
        for stream in idle:
            await stream.aclose()
        # The server notices the closes on its own time: nothing to wait on from here.
        for _ in range(100):
            if (page := await _healthz_or_none(one.url)) is not None:
                break
            await trio.sleep(0.05)
        assert page == 200


async def _healthz_or_none(url: str) -> int | None:
    try:
        return (await fetch(url + "/healthz")).status
    except iris_trio.monitor.MonitorUnavailableError:
        return None


async def test_the_dashboard_loads_nothing_from_elsewhere() -> None:
    async with monitored_pair() as (_, one, _, _):
        html = await fetch(one.url + "/")
        script = await fetch(one.url + "/dashboard.js")
        style = await fetch(one.url + "/dashboard.css")
    assert html.status == script.status == style.status == 200
    assert html.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "default-src 'none'" in html.headers["content-security-policy"]
    assert b'src="/dashboard.js"' in html.body and b'href="/dashboard.css"' in html.body
    for page in (html, script, style):
        text = page.body.decode()
        # the only URL is the SVG namespace, which names and loads nothing
        assert text.replace("http://www.w3.org/2000/svg", "").count("http") == 0
        assert "//cdn" not in text


async def test_bad_addresses_are_typed_errors() -> None:
    async with iris_trio.join(
        network=hermetic_network(), listen="127.0.0.1:0", discovery="off"
    ) as node:
        with pytest.raises(iris_trio.ConfigError, match="HOST:PORT"):
            await serve_monitor(node, "localhost")
        async with trio.open_nursery() as nursery:
            monitor: Monitor = await nursery.start(serve_monitor, node)
            with pytest.raises(OSError):
                await serve_monitor(node, f"127.0.0.1:{monitor.port}")
            nursery.cancel_scope.cancel()


# ------------------------------------------------ the monitor inside the node


async def fail_on_odd(data: bytes) -> bytes:
    if int(data) % 2:
        raise ValueError("odd")
    return data


async def test_a_node_joined_with_a_monitor_serves_it_in_its_own_task_tree() -> None:
    network = hermetic_network()
    async with iris_trio.join(
        "calc", network=network, listen="127.0.0.1:0", discovery="off", monitor="127.0.0.1:0"
    ) as node:
        url = node.monitor_url
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert not url.endswith(":0")
        health = await fetch(url + "/healthz")
        async with trio.open_nursery() as nursery:
            await nursery.start(node.serve, fail_on_odd)
            async with node.subscribe("news"), node.subscribe("news"):
                for number in range(10):
                    with contextlib.suppress(iris_trio.RemoteError):
                        await node.request("calc", b"%d" % number, timeout=5)
                status = await get_json(url + "/status")
            nursery.cancel_scope.cancel()
        after = await get_json(url + "/status")
    assert (health.status, health.body) == (200, b"ok: joined, 0 peers\n")
    assert status["node_id"] == f"{node.driver.id:032x}"
    assert (status["clusters"], status["topics"]) == (["calc"], ["news"])
    assert after["topics"] == []
    requests = status["requests"]
    assert (requests["sent"], requests["answered"], requests["failed"]) == (10, 5, 5)
    assert (requests["received"], requests["served"]) == (10, 5)  # served: replied
    assert status["address"]["listen"] == status["address"]["advertised"]
    assert 0 <= status["uptime_s"] < 60
    # The monitor went with the node: nothing listens there any more.
    with pytest.raises(iris_trio.monitor.MonitorUnavailableError):
        await fetch(url + "/healthz")


async def test_bad_monitor_addresses_are_typed_errors_before_the_node_starts() -> None:
    network = hermetic_network()
    with pytest.raises(iris_trio.ConfigError, match="HOST:PORT"):
        async with iris_trio.join(network=network, discovery="off", monitor="localhost"):
            pytest.fail("the node started")
    async with iris_trio.join(
        network=network, listen="127.0.0.1:0", discovery="off", monitor="127.0.0.1:0"
    ) as node:
        monitor = monitor_of(node)
        assert monitor is not None
        taken = f"127.0.0.1:{monitor.port}"
        with pytest.raises(MonitorAddressError, match="in use") as caught:
            async with iris_trio.join(network=network, discovery="off", monitor=taken):
                pytest.fail("the node started")
        assert isinstance(caught.value, OSError) and caught.value.errno == errno.EADDRINUSE
        assert caught.value.address == taken
    async with iris_trio.join(network=network, listen="127.0.0.1:0", discovery="off") as plain:
        assert plain.monitor is None and plain.monitor_url is None

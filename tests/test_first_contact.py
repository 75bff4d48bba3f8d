"""First contact: what a new user types first works, as a fresh process too, and
every mistake gets a clear, typed answer.

The README snippet runs as fresh processes and the lone-node readiness tests
(discovery, an unreachable seed) use real sockets; everything else runs on
trio's virtual clock over the in-memory transport.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import iris_trio
import iris_trio._serve
from iris_trio.overlay.ids import name_id, ring_distance
from iris_trio.testing import Cluster, MemoryNetwork, open_cluster

from .helpers_cluster import private_discovery, private_network, wait_until

# ------------------------------------------------------------ fresh processes

#: The README's first snippet, on a network of the test's own (name, key and
#: loopback discovery ports), so it passes while a user's dev node runs here.
_SETUP = """
import sys, trio, iris_trio
NET = iris_trio.Network(sys.argv[1], iris_trio.NetworkKey.from_bytes(bytes.fromhex(sys.argv[2])))
FOUND = iris_trio.DiscoveryConfig(mode="loopback", loopback_port=int(sys.argv[3]), loopback_ports=8)
"""
_MEMBER = (
    _SETUP
    + """
async def handler(data: bytes) -> bytes:
    return str(sum(int(term) for term in data.split(b"+"))).encode()

async def main() -> None:
    async with iris_trio.join("calc", network=NET, discovery=FOUND) as node:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.serve, handler)
            print("serving", flush=True)
            await trio.sleep_forever()

trio.run(main)
"""
)
_SNIPPET = (
    _SETUP
    + """
async def main() -> None:
    async with iris_trio.join(network=NET, discovery=FOUND) as node:
        reply = await node.request("calc", b"2+2")
        print(reply.decode())

trio.run(main)
"""
)


def _private_network() -> list[str]:
    """Arguments naming a network and a loopback discovery range of this test's own."""
    network = private_network(f"first-contact-{os.getpid()}")
    return [network.name, network.key.secret.hex(), str(private_discovery().loopback_port)]


def test_the_readme_snippet_works_as_a_fresh_process_every_time(tmp_path: Path) -> None:
    member_script, snippet_script = tmp_path / "member.py", tmp_path / "snippet.py"
    member_script.write_text(_MEMBER)
    snippet_script.write_text(_SNIPPET)
    network = _private_network()
    member = subprocess.Popen(
        [sys.executable, str(member_script), *network],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert member.stdout is not None
        assert member.stdout.readline().strip() == "serving"
        for run in range(10):
            result = subprocess.run(
                [sys.executable, str(snippet_script), *network],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, (run, result.stderr)
            assert result.stdout.strip() == "4", (run, result.stdout, result.stderr)
    finally:
        member.kill()
        member.wait()


# ----------------------------------------------------------------- readiness


async def test_a_lone_node_with_discovery_off_is_joined_at_once() -> None:
    async with iris_trio.join(discovery="off") as node:
        with trio.fail_after(1):
            await node.wait_joined()
        assert node.joined
        start = trio.current_time()
        with pytest.raises(iris_trio.NoRespondersError):
            await node.request("nobody", b"?", timeout=10)
        assert trio.current_time() - start < 1


async def test_a_lone_node_with_discovery_on_is_joined_after_its_discovery_window() -> None:
    network, found = private_network("first-contact"), private_discovery()
    async with iris_trio.join(network=network, listen="127.0.0.1:0", discovery=found) as node:
        start = trio.current_time()
        assert not node.joined
        with trio.fail_after(5):
            await node.wait_joined()
        waited = trio.current_time() - start
        assert 1.0 < waited < 4.0  # beacons had their chance (2 s), then alone is an answer
        with pytest.raises(iris_trio.NoRespondersError):
            await node.request("nobody", b"?", timeout=10)
        assert trio.current_time() - start < 5


async def test_a_lone_node_with_an_unreachable_seed_is_joined_once_the_seed_failed() -> None:
    with trio.socket.socket() as closed:  # a port nobody listens on
        await closed.bind(("127.0.0.1", 0))
        seed = f"127.0.0.1:{closed.getsockname()[1]}"
    async with iris_trio.join(discovery="off", seeds=[seed]) as node:
        with trio.fail_after(5):
            await node.wait_joined()
        with pytest.raises(iris_trio.NoRespondersError):
            await node.request("nobody", b"?", timeout=10)


def _fresh(cluster: Cluster, seed: iris_trio.Node) -> AbstractAsyncContextManager[iris_trio.Node]:
    """A node that has just started on ``cluster``'s network, joining through ``seed``."""
    return iris_trio.join(
        network=cluster.network, seeds=[seed.address], discovery="off", transport=cluster.memory
    )


async def test_a_node_that_has_just_started_waits_to_join_before_it_answers_no_responders(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first request of a node that has not joined yet reaches the members
    already there (before: NoRespondersError at once, from its own empty view)."""
    async with open_cluster(3) as group, trio.open_nursery() as nursery:
        await nursery.start(group[2].serve, _sum, "calc")
        for _ in range(5):  # fresh requesters, each asking at once
            async with _fresh(group, group[0]) as fresh:
                assert not fresh.joined
                with trio.fail_after(10):
                    assert await fresh.request("calc", b"2+2", timeout=10) == b"4"
        nursery.cancel_scope.cancel()


async def test_a_fresh_subscription_receives_the_first_event_published_after_it_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3) as group:
        publisher = group[1]
        for run in range(8):
            topic = f"news-{run}"
            async with _fresh(group, group[run % 3]) as fresh, fresh.subscribe(topic) as events:
                await publisher.publish(topic, b"first")
                with trio.fail_after(5):
                    assert await events.receive() == b"first"


@pytest.mark.parametrize("kind", ["requests", "tunnels"])
async def test_a_member_that_starts_serving_later_is_not_refused_by_the_root(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    """A node a member of a cluster for a while (``join``) that then starts to
    serve: once ``serve()`` (or ``tunnels()``) has started, a request (tunnel)
    is not refused as "no member takes requests" although the member's word
    is still on its way to the tree's root (the example kv_partitioned.py
    failed so in CI: the root answered from the member's first report)."""
    async with open_cluster(4) as group, trio.open_nursery() as nursery:
        root = group[0]
        name = next(
            f"late-{n}"
            for n in range(1000)
            if min(
                group,
                key=lambda node: ring_distance(node.driver.id, name_id("cluster", f"late-{n}")),
            )
            is root
        )
        member = group[2]

        async def late_server(*, task_status: Any) -> None:
            async with member.join(name):
                await trio.sleep(5)  # the root has known it for long: takes nothing
                group.memory.throttle(root.address, 2_000)  # its next word is slow
                if kind == "requests":
                    await member.serve(_sum, name, task_status=task_status)
                else:
                    async with member.tunnels(name) as incoming:
                        task_status.started()
                        async for tunnel in incoming:
                            await tunnel.aclose()

        await nursery.start(late_server)
        if kind == "requests":
            assert await root.request(name, b"1+1", timeout=30) == b"2"
        else:
            async with root.tunnel(name, timeout=30):
                pass
        nursery.cancel_scope.cancel()


async def test_members_that_take_no_requests_or_tunnels_answer_no_responders_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(4) as group, trio.open_nursery() as nursery:

        async def only_join(node: iris_trio.Node, *, task_status: Any) -> None:
            async with node.join("quiet"):
                task_status.started()
                await trio.sleep_forever()

        async def only_tunnels(node: iris_trio.Node, *, task_status: Any) -> None:
            async with node.tunnels("pipes"):
                task_status.started()
                await trio.sleep_forever()

        await nursery.start(only_join, group[1])
        await nursery.start(only_tunnels, group[2])
        await nursery.start(group[3].serve, _sum, "adders")
        client = group[0]
        for cluster, expected in (("quiet", "requests"), ("pipes", "requests")):
            start = trio.current_time()
            with pytest.raises(iris_trio.NoRespondersError, match=expected):
                await client.request(cluster, b"1+1", timeout=20)
            assert trio.current_time() - start < 2, cluster  # not the 20 s timeout
        for cluster in ("quiet", "adders"):
            start = trio.current_time()
            with pytest.raises(iris_trio.NoRespondersError, match="tunnels"):
                async with client.tunnel(cluster, timeout=20):
                    pass
            assert trio.current_time() - start < 2, cluster
        # The members that do take them still get them.
        assert await client.request("adders", b"1+1", timeout=10) == b"2"
        async with client.tunnel("pipes", timeout=10):
            pass
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ handlers


async def _sum(data: bytes) -> bytes:
    return str(sum(int(term) for term in data.split(b"+"))).encode()


def _spare(node: iris_trio.Node, cluster: str) -> int:
    trees = node.driver.trees
    assert trees is not None
    return trees.trees[name_id("cluster", cluster)].spare


async def _wait_spare(member: iris_trio.Node, spare: int) -> None:
    await wait_until(
        [member],
        lambda: _spare(member, "c") == spare,
        what=f"the member to report {spare} places free",
        timeout=5,
    )


@asynccontextmanager
async def _serving(
    handler: Callable[[bytes], Awaitable[Any]], limit: int
) -> AsyncIterator[tuple[iris_trio.Node, iris_trio.Node]]:
    async with open_cluster(2) as group, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(group[1].serve, handler, "c", limit=limit))
        yield group[0], group[1]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("result", "type_name", "text"),
    [
        ("a str", "TypeError", "returned str, not bytes"),
        (None, "TypeError", "returned NoneType, not bytes"),
        (42, "TypeError", "returned int, not bytes"),
        (bytes(iris_trio.MAX_MESSAGE_SIZE + 1), "MessageTooLargeError", "reply is too large"),
        (ValueError("bad input"), "ValueError", "bad input"),
        (KeyError("k"), "KeyError", "'k'"),
        (ExceptionGroup("several", [ValueError("a")]), "ExceptionGroup", "several"),
    ],
)
async def test_whatever_a_handler_does_the_requester_gets_a_typed_answer_and_the_member_goes_on(
    autojump_clock: trio.testing.MockClock, result: object, type_name: str, text: str
) -> None:
    async def handler(data: bytes) -> Any:
        if data == b"ok":
            return b"fine"
        if isinstance(result, BaseException):
            raise result
        return result

    async with _serving(handler, limit=2) as (client, member):
        for _ in range(5):  # more than the limit: every place is given back
            with pytest.raises(iris_trio.RemoteError) as caught:
                await client.request("c", b"x", timeout=10)
            assert caught.value.type_name == type_name
            assert text in caught.value.message
            assert str(caught.value).startswith(f"{type_name}: ")
        assert await client.request("c", b"ok", timeout=10) == b"fine"
        await _wait_spare(member, 2)


async def test_a_handler_past_its_deadline_gives_its_place_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(data: bytes) -> bytes:
        if data == b"slow":
            await trio.sleep_forever()
        return b"quick"

    async with _serving(slow, limit=2) as (client, member):
        for _ in range(4):  # twice the limit: each overrun frees its place
            with pytest.raises(iris_trio.RequestTimeoutError):
                await client.request("c", b"slow", timeout=0.3)
        await _wait_spare(member, 2)
        assert await client.request("c", b"go", timeout=5) == b"quick"


async def test_a_pull_model_failure_carries_the_type_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(2) as group, trio.open_nursery() as nursery:

        async def member(*, task_status: Any) -> None:
            async with group[1].requests("c") as incoming:
                task_status.started()
                async for request in incoming:
                    await request.fail("no such key", "KeyError")

        await nursery.start(member)
        with pytest.raises(iris_trio.RemoteError) as caught:
            await group[0].request("c", b"x", timeout=5)
        assert (caught.value.type_name, caught.value.message) == ("KeyError", "no such key")
        nursery.cancel_scope.cancel()


# ------------------------------------------------------- the node's lifetime


def _alone(cluster: str | None = None) -> AbstractAsyncContextManager[iris_trio.Node]:
    """join() as the user calls it, alone on a memory network of its own."""
    return iris_trio.join(cluster, discovery="off", transport=MemoryNetwork())


async def test_every_call_on_a_node_that_has_stopped_raises_closed_resource_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _alone() as node:
        pass
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: node.publish("t", b"x"),
        lambda: node.broadcast("c", b"x"),
        lambda: node.request("c", b"x"),
        node.wait_joined,
    ]
    for call in calls:
        with pytest.raises(trio.ClosedResourceError):
            await call()
    for manager in (
        lambda: node.subscribe("t"),
        lambda: node.join("c"),
        node.broadcasts,
        lambda: node.requests("c"),
        lambda: node.tunnel("c"),
        lambda: node.tunnels("c"),
    ):
        with pytest.raises(trio.ClosedResourceError):
            async with manager():
                pass
    with pytest.raises(trio.ClosedResourceError):
        await node.serve(_sum, "c")


async def test_join_adds_no_exception_group_around_the_bodys_own_exception(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(KeyError) as caught:
        async with _alone():
            raise KeyError("mine")
    assert not isinstance(caught.value, BaseExceptionGroup)
    group = ExceptionGroup("my own", [ValueError("a"), TypeError("b")])
    with pytest.raises(ExceptionGroup) as raised:
        async with _alone():
            raise group
    # Trio may hand back a copy of the group; its contents are the body's own.
    assert raised.value.message == "my own"
    assert raised.value.exceptions == group.exceptions


# ------------------------------------------------------------------ inputs


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (math.nan, iris_trio.ConfigError),
        (-1.0, iris_trio.ConfigError),
        (0, iris_trio.ConfigError),
        (math.inf, iris_trio.ConfigError),
        (1e12, iris_trio.ConfigError),
        ("5", TypeError),
    ],
)
async def test_bad_timeouts_are_refused_clearly(
    autojump_clock: trio.testing.MockClock, timeout: Any, error: type[Exception]
) -> None:
    async with _alone() as node:
        with pytest.raises(error, match="timeout"):
            await node.request("c", b"x", timeout=timeout)
        with pytest.raises(error, match="timeout"):
            async with node.tunnel("c", timeout=timeout):
                pass


@pytest.mark.parametrize(
    ("name", "error", "text"),
    [
        ("", iris_trio.ConfigError, "empty"),
        ("x" * (iris_trio.MAX_NAME_LENGTH + 1), iris_trio.ConfigError, "at most"),
        ("é" * (iris_trio.MAX_NAME_LENGTH // 2 + 1), iris_trio.ConfigError, "at most"),
        (5, TypeError, "str"),
        (b"bytes", TypeError, "str"),
    ],
)
async def test_bad_names_are_refused_clearly(
    autojump_clock: trio.testing.MockClock, name: Any, error: type[Exception], text: str
) -> None:
    async with _alone() as node:
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: node.publish(name, b"x"),
            lambda: node.broadcast(name, b"x"),
            lambda: node.request(name, b"x"),
        ]
        for attempt in attempts:
            with pytest.raises(error, match=text):
                await attempt()
        for manager in (
            lambda: node.subscribe(name),
            lambda: node.join(name),
            lambda: node.broadcasts(name),
            lambda: node.requests(name),
            lambda: node.tunnel(name),
            lambda: node.tunnels(name),
        ):
            with pytest.raises(error, match=text):
                async with manager():
                    pass
    with pytest.raises(error, match=text):
        async with _alone(name):
            pass


async def test_longest_allowed_name_works(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(2) as group, trio.open_nursery() as nursery:
        name = "n" * iris_trio.MAX_NAME_LENGTH
        await nursery.start(group[1].serve, _sum, name)
        assert await group[0].request(name, b"1+2", timeout=10) == b"3"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bad", [0, -1, 2**40])
async def test_bad_counts_are_refused_clearly(
    autojump_clock: trio.testing.MockClock, bad: int
) -> None:
    async with _alone("c") as node:
        with pytest.raises(iris_trio.ConfigError, match="limit"):
            await node.serve(_sum, limit=bad)
        with pytest.raises(iris_trio.ConfigError, match="limit"):
            async with node.requests(limit=bad):
                pass
        with pytest.raises(iris_trio.ConfigError, match="capacity"):
            async with node.subscribe("t", capacity=bad):
                pass
        with pytest.raises(iris_trio.ConfigError, match="window"):
            async with node.tunnels(window=bad):
                pass


# ---------------------------------------------------------------------- logs


async def test_info_logs_tell_joining_peers_clusters_and_topics(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio")
    async with open_cluster(3) as cluster:
        node = cluster[0]
        async with node.join("calc"), node.subscribe("news"):
            pass
    messages = [record.getMessage() for record in caplog.records]
    assert sum("joined the overlay as" in m for m in messages) == 3  # once per node
    assert any("peer" in m and "connected" in m for m in messages)
    assert any("peer" in m and "disconnected" in m for m in messages)
    for said in ("joined cluster 'calc'", "left cluster 'calc'", "subscribed to topic 'news'"):
        assert said in messages, said


async def test_the_dev_network_warning_comes_once_per_process(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(iris_trio._serve, "_dev_warned", False)  # as in a fresh process
    caplog.set_level(logging.WARNING, logger="iris_trio")
    for _ in range(3):
        async with iris_trio.join(discovery="off"):
            pass
    warnings = [r for r in caplog.records if "dev network" in r.getMessage()]
    assert len(warnings) == 1 and "not secret" in warnings[0].getMessage()

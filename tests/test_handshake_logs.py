"""A refused handshake is logged on both sides with its likely cause, rate-limited."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from iris_trio._logs import LogLimiter
from iris_trio.crypto import Network, NetworkKey, NodeIdentity
from iris_trio.errors import HandshakeError
from iris_trio.transport import LinkListener, connect_tcp_link, open_link, serve_tcp_links
from iris_trio.transport import handshake as handshake_module

OTHER_NETWORK = "the peer uses another network key or network name"
REFUSED = "the peer closed the connection during the handshake: it likely uses another"


@pytest.fixture(autouse=True)
def fresh_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing logged yet (the limiter is per process)."""
    monkeypatch.setattr(handshake_module, "_log_limiter", LogLimiter())


def hermetic_network() -> Network:
    return Network("test-" + secrets.token_hex(6), NetworkKey.generate())


def transport_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "iris_trio.transport" and record.levelno == level
    ]


async def _idle(_link: object) -> None:
    await trio.sleep_forever()


@asynccontextmanager
async def listening(network: Network) -> AsyncIterator[tuple[LinkListener, int]]:
    async with trio.open_nursery() as nursery:
        listener: LinkListener = await nursery.start(
            lambda task_status: serve_tcp_links(
                _idle,
                0,
                identity=NodeIdentity.generate(),
                network=network,
                task_status=task_status,
            )
        )
        yield listener, int(listener.listen.rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


async def dial(port: int, network: Network) -> None:
    with trio.fail_after(5):
        async with connect_tcp_link(
            "127.0.0.1", port, identity=NodeIdentity.generate(), network=network
        ):
            pass


def _other_key(network: Network) -> Network:
    return Network(network.name, NetworkKey.generate())


def _other_name(network: Network) -> Network:
    return Network(network.name + "-other", network.key)


@pytest.mark.parametrize("other", [_other_key, _other_name], ids=["other-key", "other-name"])
async def test_both_sides_log_one_warning_naming_the_cause(
    other: Callable[[Network], Network], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio.transport")
    ours = hermetic_network()
    async with listening(ours) as (listener, port):
        with pytest.raises(HandshakeError, match="another network key or network name"):
            await dial(port, other(ours))
        assert listener.statistics().handshakes_failed == 1
    warnings = transport_records(caplog, logging.WARNING)
    assert len(warnings) == 2, warnings
    accepted = [w for w in warnings if w.endswith(handshake_module.OTHER_NETWORK)]
    assert len(accepted) == 1, warnings
    assert accepted[0].startswith("link handshake with 127.0.0.1:")
    assert f"127.0.0.1:{port} " not in accepted[0]  # the dialler's address, not ours
    dialled = [w for w in warnings if REFUSED in w]
    assert len(dialled) == 1, warnings
    assert dialled[0].startswith(f"link handshake with 127.0.0.1:{port} failed: ")


async def test_fifty_refused_attempts_from_one_address_log_once_per_side(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio.transport")
    ours = hermetic_network()
    stranger = _other_key(ours)
    async with listening(ours) as (listener, port):
        for _ in range(50):
            with pytest.raises(HandshakeError):
                await dial(port, stranger)
        assert listener.statistics().handshakes_failed == 50
    warnings = transport_records(caplog, logging.WARNING)
    assert len(warnings) == 2, warnings
    assert sum(OTHER_NETWORK in w for w in warnings) == 1
    assert sum(REFUSED in w for w in warnings) == 1


async def test_the_rate_limit_is_per_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio.transport")
    ours = hermetic_network()
    stranger = _other_key(ours)
    async with listening(ours) as (_, first), listening(ours) as (_, second):
        for port in (first, second, first, second):
            with pytest.raises(HandshakeError):
                await dial(port, stranger)
    dialled = [w for w in transport_records(caplog, logging.WARNING) if REFUSED in w]
    assert sorted(dialled) == sorted(
        f"link handshake with 127.0.0.1:{port} failed: {handshake_module.REFUSED}"
        for port in (first, second)
    )


async def test_a_silent_peer_is_logged_as_stalled_at_the_deadline(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio.transport")
    network = hermetic_network()
    for initiator in (False, True):
        ours, _theirs = trio.testing.memory_stream_pair()
        with pytest.raises(HandshakeError, match="within 3 s"):
            async with open_link(
                ours, initiator=initiator, identity=NodeIdentity.generate(), network=network
            ):
                pass
    warnings = transport_records(caplog, logging.WARNING)
    assert warnings == [
        "link handshake with an unknown address failed: the peer sent no handshake within 3 s"
        " (it is not an iris_trio node, or it stalled)",
        "link handshake with an unknown address failed: the peer did not answer within 3 s"
        " (it stalled, or it is not an iris_trio node)",
    ]


async def test_a_stranger_speaking_another_protocol_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio.transport")
    async with listening(hermetic_network()) as (listener, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(2):
            while not listener.statistics().handshakes_failed:  # noqa: ASYNC110 (counter only)
                await trio.sleep(0.01)
        await stream.aclose()
    (warning,) = transport_records(caplog, logging.WARNING)
    assert "failed: the peer is not an iris_trio node" in warning


async def test_a_connection_that_says_nothing_is_only_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="iris_trio.transport")
    async with listening(hermetic_network()) as (listener, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()  # a port probe
        with trio.fail_after(2):
            while not listener.statistics().handshakes_failed:  # noqa: ASYNC110 (counter only)
                await trio.sleep(0.01)
    assert not transport_records(caplog, logging.WARNING)
    (info,) = transport_records(caplog, logging.INFO)
    assert "without sending a handshake" in info

"""Tutorial step 7: test your service on the in-memory cluster and the virtual clock.

``iris_trio.testing.open_cluster(n)`` runs n nodes in one trio run over an
in-memory network (no sockets) and returns once they form one overlay. Under
trio's ``MockClock`` (pytest-trio's ``autojump_clock`` fixture) timers cost no
wall time: a 30 s timeout or a member's death takes milliseconds.

    python -m pytest examples/tutorial_7_testing.py    (or run this file)
"""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing

import iris_trio
from iris_trio.testing import open_cluster
from tutorial_1_service import add

pytestmark = pytest.mark.trio  # (or trio_mode = true in the pytest configuration)


async def test_calc_answers(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(4) as nodes, trio.open_nursery() as nursery:
        for member in nodes[1:]:
            await nursery.start(member.serve, add, "calc")
        assert await nodes[0].request("calc", b"2 3 4") == b"9"
        nursery.cancel_scope.cancel()


async def test_bad_input_is_a_remote_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(2) as nodes, trio.open_nursery() as nursery:
        await nursery.start(nodes[1].serve, add, "calc")
        with pytest.raises(iris_trio.RemoteError) as caught:
            await nodes[0].request("calc", b"two")
        assert caught.value.type_name == "ValueError"
        nursery.cancel_scope.cancel()


async def test_a_member_crash_costs_no_request(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(5) as nodes, trio.open_nursery() as nursery:
        for member in nodes[2:]:
            await nursery.start(member.serve, add, "calc")
        await nodes.kill(nodes[3])  # its links break at once, no goodbye
        for n in range(20):
            assert await nodes[0].request("calc", f"{n} 1".encode()) == str(n + 1).encode()
        nursery.cancel_scope.cancel()


async def test_timeouts_take_no_wall_time(autojump_clock: trio.testing.MockClock) -> None:
    async def never(data: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # (never reached)

    async with open_cluster(2) as nodes, trio.open_nursery() as nursery:
        await nursery.start(nodes[1].serve, never, "stuck")
        start = trio.current_time()
        with pytest.raises(iris_trio.RequestTimeoutError):
            await nodes[0].request("stuck", b"?", timeout=60)
        assert trio.current_time() - start == pytest.approx(60, abs=1)  # virtual seconds
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(
        pytest.main(
            [
                __file__,
                "-q",
                "-p",
                "no:cacheprovider",
                "-W",
                "ignore::pytest.PytestAssertRewriteWarning",
            ]
        )
    )

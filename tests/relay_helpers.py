"""Nodes serving the relay, for the relay tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import iris_trio
from iris_trio.relay import Relay, RelayLimits, serve_relay


@asynccontextmanager
async def relay_node(
    limits: RelayLimits | None = None,
) -> AsyncIterator[tuple[iris_trio.Node, Relay]]:
    """A lone node (no discovery) serving the relay on a free loopback port."""
    async with iris_trio.join(discovery="off") as node, trio.open_nursery() as nursery:
        relay: Relay = await nursery.start(
            lambda task_status: serve_relay(node, 0, limits=limits, task_status=task_status)
        )
        try:
            yield node, relay
        finally:
            assert relay.statistics().internal_errors == 0
            nursery.cancel_scope.cancel()

"""Nodes serving the relay, for the relay tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import iris_trio
from iris_trio.crypto import Network, NetworkKey
from iris_trio.relay import Relay, RelayLimits, serve_relay


def hermetic_network() -> Network:
    """A network of this test alone: its own name and key."""
    return Network("test-" + secrets.token_hex(6), NetworkKey.generate())


@asynccontextmanager
async def relay_node(
    limits: RelayLimits | None = None,
) -> AsyncIterator[tuple[iris_trio.Node, Relay]]:
    """A lone node (its own network, no discovery) serving the relay on a free
    loopback port."""
    async with (
        iris_trio.join(network=hermetic_network(), listen="127.0.0.1:0", discovery="off") as node,
        trio.open_nursery() as nursery,
    ):
        relay: Relay = await nursery.start(
            lambda task_status: serve_relay(node, 0, limits=limits, task_status=task_status)
        )
        try:
            yield node, relay
        finally:
            assert relay.statistics().internal_errors == 0
            nursery.cancel_scope.cancel()

"""``join()`` and ``serve_node()``: a node's settings checked, its overlay
driver and its monitor built, and the :class:`~iris_trio._node.Node` run.

Above the node and its monitor (which reads the node), so that neither
imports the other's builder.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from ._node import Node
from ._util import guarded, open_unwrapped_nursery
from .crypto.identity import NodeIdentity
from .crypto.keys import DEV_NETWORK, Network, NetworkKey
from .errors import ConfigError
from .monitor import Monitor, bind_monitor, serve_monitor
from .overlay.config import OverlayConfig
from .overlay.discovery import DiscoveryConfig, DiscoveryMode
from .overlay.driver import OverlayDriver, split_address
from .patterns.limits import DEFAULT_SUBSCRIPTION_BUDGET, check_name, check_size
from .transport.base import Transport, is_loopback

__all__ = ["join", "serve_node"]

log = logging.getLogger("iris_trio")

_dev_warned = False


def _network(network: str | Network | None, key: NetworkKey | bytes | None) -> Network:
    if isinstance(network, Network):
        if key is not None:
            raise ConfigError("give the key inside the Network or as key=, not both")
        return network
    if network is None and key is None:
        return DEV_NETWORK
    if network is None or key is None:
        raise ConfigError("a real network needs both network= and key=")
    if isinstance(key, bytes):
        key = NetworkKey.from_bytes(key)
    return Network(network, key)


async def serve_node(
    cluster: str | None = None,
    *,
    network: str | Network | None = None,
    key: NetworkKey | bytes | None = None,
    listen: str | None = None,
    seeds: Sequence[str] = (),
    discovery: DiscoveryMode | DiscoveryConfig | None = None,
    identity: NodeIdentity | None = None,
    config: OverlayConfig | None = None,
    transport: Transport | None = None,
    monitor: str | None = None,
    subscription_bytes: int = DEFAULT_SUBSCRIPTION_BUDGET,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until cancelled (the composable form of :func:`join`).

    Reports the :class:`Node` through ``task_status``. See :func:`join` for the
    arguments (``monitor`` included: the monitor runs as one more task of the
    node's own); ``transport`` is how links are made: TCP by default,
    :class:`iris_trio.testing.MemoryNetwork` for tests (with ``discovery="off"``).

    Example::

        async with trio.open_nursery() as nursery:
            node = await nursery.start(functools.partial(iris_trio.serve_node, "calc"))
            ...
            nursery.cancel_scope.cancel()  # the node leaves the overlay

    Cancellation: the node leaves the overlay gracefully (its goodbye is
    queued under a shield, a second at most), its monitor stops, and the call
    returns once every task of the node has ended. Cancelled before it has
    started, it leaves nothing behind (a monitor's listeners are closed).

    Raises:
        ConfigError: an invalid argument (before anything starts).
        MonitorAddressError: the monitor cannot listen at ``monitor`` (before
            the node starts).
    """
    global _dev_warned  # noqa: PLW0603 - once per process
    if cluster is not None:
        check_name("cluster", cluster)
    check_size("subscription_bytes", subscription_bytes)
    chosen = _network(network, key)
    dev = chosen is DEV_NETWORK
    settings: DiscoveryConfig | None = None
    mode: DiscoveryMode
    if isinstance(discovery, DiscoveryConfig):
        settings, mode = discovery, discovery.mode
    else:
        mode = discovery or ("loopback" if dev else "lan")
    if mode not in ("loopback", "lan", "off"):
        raise ConfigError(f"discovery must be 'loopback', 'lan' or 'off', not {mode!r}")
    if dev and mode == "lan":
        raise ConfigError(
            "the dev network discovers on loopback only: use discovery='loopback' or 'off', "
            "or a real network (network= and key=) for LAN discovery"
        )
    host, port = split_address(listen or ("127.0.0.1:0" if dev else "0.0.0.0:0"))
    loopback_only = dev and transport is None  # (a test's memory network has no hosts)
    if loopback_only:
        _check_dev_addresses(host, seeds)
    if dev and not _dev_warned:
        _dev_warned = True
        log.warning("dev network: loopback only; its key is published, not secret")
    build = functools.partial(
        OverlayDriver,
        identity or NodeIdentity.generate(),
        chosen,
        host=host,
        port=port,
        seeds=list(seeds),
        discovery=settings or DiscoveryConfig(mode=mode),
        config=config,
        transport=transport,
        loopback_only=loopback_only,
    )
    node = Node(build, cluster, subscription_bytes=subscription_bytes)
    starter = None if monitor is None else _MonitorStarter(await bind_monitor(monitor))
    await node._run(task_status, starter)


class _MonitorStarter:
    """The node's monitor on listeners bound before the node starts."""

    def __init__(self, listeners: list[trio.SocketListener]) -> None:
        self._listeners = listeners

    async def start(self, node: Node, nursery: trio.Nursery) -> Monitor:
        monitor: Monitor = await nursery.start(guarded, serve_monitor, node, self._listeners)
        return monitor

    def abandon(self) -> None:
        for listener in self._listeners:
            listener.socket.close()


def _check_dev_addresses(host: str, seeds: Sequence[str]) -> None:
    """The dev network's key is published: a dev node reachable from a network
    would let anyone in, so it listens on and dials loopback only."""
    if not is_loopback(host):
        raise ConfigError(
            f"the dev network is loopback only: cannot listen on {host!r} (its key is "
            "published); listen on 127.0.0.1, or use a network of your own (a name and a key)"
        )
    for seed in seeds:
        try:
            seed_host = split_address(seed)[0]
        except ValueError:
            continue  # reported with the seeds' other checks
        if not is_loopback(seed_host):
            raise ConfigError(
                f"the dev network is loopback only: seed {seed!r} is not on this host; "
                "use a network of your own (a name and a key) to join other hosts"
            )


@asynccontextmanager
async def join(
    cluster: str | None = None,
    *,
    network: str | Network | None = None,
    key: NetworkKey | bytes | None = None,
    listen: str | None = None,
    seeds: Sequence[str] = (),
    discovery: DiscoveryMode | DiscoveryConfig | None = None,
    identity: NodeIdentity | None = None,
    config: OverlayConfig | None = None,
    transport: Transport | None = None,
    monitor: str | None = None,
    subscription_bytes: int = DEFAULT_SUBSCRIPTION_BUDGET,
) -> AsyncIterator[Node]:
    """Join the overlay (as a member of ``cluster``, if given) for the ``async with`` body.

    Args:
        cluster: a cluster to be a member of.
        network / key: a real network (its name and key, or a Network); without
            them, the dev network: loopback only, zero configuration, not secret.
        listen: "host:port" to accept links on (dev: 127.0.0.1:0; else 0.0.0.0:0).
        seeds: addresses to join through, in addition to discovery.
        discovery: "loopback", "lan" or "off" (dev: loopback; else lan), or a
            DiscoveryConfig for ports and intervals of its own.
        identity: the node's key pair (default: a fresh one).
        config: overlay timing and sizing.
        transport: how links are made: TCP by default;
            :class:`iris_trio.testing.MemoryNetwork` for tests (it needs
            ``discovery="off"`` and seeds: discovery beacons are UDP).
        monitor: "host:port" to serve the node's monitor on (read-only HTTP:
            ``/healthz``, ``/status``, ``/metrics`` and a dashboard; see
            docs/operations.md), as one more task of the node's; port 0 picks a
            free port, which :attr:`Node.monitor_url` shows. Default: none.
            Give a host other than loopback only to let other hosts read it.
        subscription_bytes: the most bytes all the node's subscriptions and
            broadcast receivers buffer together (default 256 MiB); beyond,
            the one holding the most drops its oldest event (counted there).
            Each also buffers at most its own ``max_bytes=`` (see
            :meth:`Node.subscribe`).

    Network failures never escape; the body's own exception leaves unwrapped.
    On exit the node leaves the overlay gracefully.

    Cancellation: cancelling the body (or leaving it by an exception) leaves
    the overlay gracefully, as :func:`serve_node` does when cancelled;
    ``join()`` returns once every task of the node has ended. Cancelled while
    joining, it leaves nothing behind.

    Raises:
        ConfigError: an invalid argument, such as a ``monitor`` that is not
            HOST:PORT (before anything starts).
        MonitorAddressError: the monitor cannot listen at ``monitor`` (in use,
            not this host's...; an ``OSError``), before the node starts.
    """
    async with open_unwrapped_nursery() as nursery:
        node: Node = await nursery.start(
            lambda task_status: serve_node(
                cluster,
                network=network,
                key=key,
                listen=listen,
                seeds=seeds,
                discovery=discovery,
                identity=identity,
                config=config,
                transport=transport,
                monitor=monitor,
                subscription_bytes=subscription_bytes,
                task_status=task_status,
            )
        )
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()

"""Zero-configuration discovery: beacons over UDP (the trio side).

Modes:

* ``loopback``: nodes of one host find each other with no configuration. Each
  node binds one port of a small fixed range on 127.0.0.1 and sends its beacon
  to every port of that range. Nothing leaves the host.
* ``lan``: like Iris, beacons are broadcast on the local network to one fixed
  port (every node binds it with SO_REUSEPORT). Use only on a network you own;
  the tests run it inside network namespaces they create.
* ``off``: no beacons; seeds only.

Discovery never stops: it beacons every ``fast_interval`` until the overlay
says it is settled, then every ``slow_interval``, so a healed partition is
found again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Literal

import trio

from .beacon import MAX_BEACON, Beacon, BeaconCodec

__all__ = ["DiscoveryConfig", "DiscoveryMode", "run_discovery"]

log = logging.getLogger("iris_trio.overlay")

#: How a node finds the others, as ``discovery=`` of :func:`iris_trio.join`
#: takes it (the modes are described in the module docstring).
DiscoveryMode = Literal["loopback", "lan", "off"]


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """Where and how often beacons go.

    Attributes:
        mode: ``loopback``, ``lan`` or ``off``.
        loopback_port: first port of the loopback range.
        loopback_ports: size of the loopback range (nodes per host found this way).
        lan_port: the broadcast port of ``lan`` mode.
        fast_interval: beacon period until the overlay settles.
        slow_interval: beacon period afterwards.

    ``discovery=`` of :func:`iris_trio.join` takes one for ports and
    intervals of its own (a mode alone, ``"lan"``, keeps the defaults); every
    node that should find the others needs the same ports. Example::

        discovery = DiscoveryConfig(mode="lan", lan_port=40000, slow_interval=30.0)
        async with iris_trio.join("calc", network="prod", key=key, discovery=discovery):
            ...
    """

    mode: DiscoveryMode = "loopback"
    loopback_port: int = 52480
    loopback_ports: int = 32
    lan_port: int = 52479
    fast_interval: float = 1.0
    slow_interval: float = 5.0


async def _bind_loopback(config: DiscoveryConfig) -> trio.socket.SocketType:
    for port in range(config.loopback_port, config.loopback_port + config.loopback_ports):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        try:
            await sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
        else:
            return sock
    raise OSError("every loopback discovery port is taken")


async def _bind_lan(config: DiscoveryConfig) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    await sock.bind(("0.0.0.0", config.lan_port))
    return sock


_SIOCGIFFLAGS = 0x8913
_SIOCGIFBRDADDR = 0x8919
_IFF_UP, _IFF_BROADCAST, _IFF_LOOPBACK = 0x1, 0x2, 0x8


def broadcast_addresses() -> list[str]:
    """The IPv4 broadcast address of every up, non-loopback interface (Linux).

    Read fresh for each beacon round, so interfaces that come and go are followed.
    """
    addresses: list[str] = []
    try:
        import fcntl  # noqa: PLC0415 - POSIX only

        names = socket.if_nameindex()
    except (ImportError, OSError):
        return ["255.255.255.255"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(probe, _SIOCGIFFLAGS, request), 16)[0]
                if flags & _IFF_LOOPBACK or not flags & _IFF_UP or not flags & _IFF_BROADCAST:
                    continue
                reply = fcntl.ioctl(probe, _SIOCGIFBRDADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            addresses.append(socket.inet_ntoa(reply[20:24]))
    return addresses


async def run_discovery(
    config: DiscoveryConfig,
    codec: BeaconCodec,
    node_id: bytes,
    address: str,
    on_found: Callable[[Beacon, str], None],
    settled: Callable[[], bool],
    *,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Beacon and listen until cancelled; reports the bound UDP port (None when off)."""
    if config.mode == "off":
        task_status.started(None)
        await trio.sleep_forever()
    sock = await (_bind_loopback(config) if config.mode == "loopback" else _bind_lan(config))
    with sock:
        port = sock.getsockname()[1]
        loopback = [
            ("127.0.0.1", p)
            for p in range(config.loopback_port, config.loopback_port + config.loopback_ports)
            if p != port
        ]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_listen, sock, codec, node_id, on_found)
            task_status.started(port)
            while True:
                if config.mode == "loopback":
                    targets = loopback
                else:
                    targets = [(host, config.lan_port) for host in broadcast_addresses()]
                beacon = codec.seal(node_id, address, time.time())
                for target in targets:
                    # OSError: nobody bound there (loopback) or no route (lan).
                    with contextlib.suppress(OSError):
                        await sock.sendto(beacon, target)
                await trio.sleep(config.slow_interval if settled() else config.fast_interval)


async def _listen(
    sock: trio.socket.SocketType,
    codec: BeaconCodec,
    node_id: bytes,
    on_found: Callable[[Beacon, str], None],
) -> None:
    while True:
        try:
            data, source = await sock.recvfrom(MAX_BEACON + 1)
        except OSError:  # e.g. ICMP errors surfacing on a UDP socket
            continue
        beacon = codec.open(data, time.time(), trio.current_time())
        if beacon is not None and beacon.node_id != node_id:
            on_found(beacon, source[0])

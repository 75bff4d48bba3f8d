"""Discovery beacons: only fresh beacons of our own network get through, at a bounded rate."""

from __future__ import annotations

import pytest

from iris_trio.crypto import DEV_NETWORK, Network, NetworkKey
from iris_trio.overlay.beacon import BeaconCodec
from iris_trio.overlay.discovery import broadcast_addresses

NODE = bytes(range(16))
WALL = 1_800_000_000.0


def test_a_fresh_beacon_of_our_network_is_accepted() -> None:
    codec = BeaconCodec(DEV_NETWORK)
    beacon = codec.open(codec.seal(NODE, "127.0.0.1:4000", WALL), WALL + 0.1, 0.0)
    assert beacon is not None
    assert (beacon.node_id, beacon.address) == (NODE, "127.0.0.1:4000")


@pytest.mark.parametrize(
    ("sender", "reason"),
    [
        (Network("another-network", DEV_NETWORK.key), "other network"),
        (Network(DEV_NETWORK.name, NetworkKey.generate()), "authentication"),
    ],
    ids=["other-network", "wrong-key"],
)
def test_strangers_are_refused(sender: Network, reason: str) -> None:
    codec = BeaconCodec(DEV_NETWORK)
    assert codec.open(BeaconCodec(sender).seal(NODE, "x:1", WALL), WALL, 0.0) is None
    assert codec.refused == {reason: 1}


def test_stale_replayed_and_tampered_beacons_are_refused() -> None:
    codec = BeaconCodec(DEV_NETWORK, per_node_interval=0.0)
    old = codec.seal(NODE, "x:1", WALL - 60)
    assert codec.open(old, WALL, 0.0) is None
    fresh = codec.seal(NODE, "x:1", WALL)
    assert codec.open(fresh, WALL, 1.0) is not None
    assert codec.open(fresh, WALL, 2.0) is None  # the same beacon again
    earlier = codec.seal(NODE, "x:1", WALL - 1)
    assert codec.open(earlier, WALL, 3.0) is None  # older than one already seen
    tampered = bytearray(codec.seal(NODE, "x:1", WALL + 1))
    tampered[30] ^= 1  # inside the timestamp, covered by the MAC
    assert codec.open(bytes(tampered), WALL, 4.0) is None
    assert codec.open(b"ITB1" + bytes(10), WALL, 5.0) is None
    assert codec.open(bytes(2000), WALL, 6.0) is None
    assert codec.refused == {"stale": 1, "replay": 2, "authentication": 1, "size": 2}


def test_beacons_are_rate_limited_per_node_and_in_total() -> None:
    codec = BeaconCodec(DEV_NETWORK, per_node_interval=1.0, burst=5, rate=1.0)
    assert codec.open(codec.seal(NODE, "x:1", WALL), WALL, 0.0) is not None
    assert codec.open(codec.seal(NODE, "x:1", WALL + 0.1), WALL, 0.5) is None  # too soon
    accepted = sum(
        codec.open(codec.seal(bytes([n]) * 16, "x:1", WALL), WALL, 0.5) is not None
        for n in range(20)
    )
    assert accepted == 4  # the bucket held 5 tokens; one went to the first beacon
    assert codec.refused["rate"] == 17


def test_interface_broadcast_addresses_are_read_not_probed() -> None:
    # Reading interface configuration sends nothing; the loopback is never listed.
    assert "127.255.255.255" not in broadcast_addresses()

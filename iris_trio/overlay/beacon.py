"""Discovery beacons: authenticated, timestamped announcements (sans-IO).

A beacon says "node X of network N accepts links at this address, at this
time". It is authenticated with a key derived from the network key, so
strangers and other networks cannot inject peers, and it carries a timestamp
checked against the receiver's clock and the last beacon of the same node, so
old or replayed beacons are ignored. Receivers rate-limit beacons per node and
in total. Layout (big-endian)::

    "ITB1" | network tag (8) | node id (16) | time ms (8) | nonce (8)
    | address length (1) | address (UTF-8) | MAC (16)
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import struct
from typing import Final

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from ..crypto.keys import Network

__all__ = ["Beacon", "BeaconCodec"]

MAGIC: Final = b"ITB1"
_HEAD = struct.Struct(">4s8s16sQ8sB")
_MAC_SIZE: Final = 16
MAX_BEACON: Final = _HEAD.size + 255 + _MAC_SIZE


@dataclasses.dataclass(frozen=True, slots=True)
class Beacon:
    """An accepted beacon: who, where, sent when (seconds since the epoch)."""

    node_id: bytes
    address: str
    sent_at: float


class BeaconCodec:
    """Seals and opens beacons of one network, with replay and rate limits.

    Args:
        network: the network whose key authenticates beacons.
        max_skew: beacons stamped further than this from our clock are refused.
        per_node_interval: at most one beacon per node in this time is accepted.
        burst / rate: a token bucket over all beacons accepted.
    """

    def __init__(
        self,
        network: Network,
        *,
        max_skew: float = 30.0,
        per_node_interval: float = 0.5,
        burst: float = 100.0,
        rate: float = 100.0,
    ) -> None:
        secret = network.key.secret + network.name.encode("utf-8")
        self._key = blake2b(secret, digest_size=32, person=b"iris-trio-beacon", encoder=RawEncoder)
        self._tag = blake2b(
            network.name.encode("utf-8"), digest_size=8, person=b"iris-trio-net", encoder=RawEncoder
        )
        self.max_skew = max_skew
        self.per_node_interval = per_node_interval
        self._burst = burst
        self._rate = rate
        self._tokens = burst
        self._refilled_at: float | None = None
        self._last: dict[bytes, tuple[int, float]] = {}  # node -> (stamp ms, accepted at)
        #: Counters of what was refused and why.
        self.refused: dict[str, int] = {}

    def _mac(self, data: bytes) -> bytes:
        digest: bytes = blake2b(data, digest_size=_MAC_SIZE, key=self._key, encoder=RawEncoder)
        return digest

    def seal(self, node_id: bytes, address: str, now_wall: float) -> bytes:
        """A beacon announcing ``node_id`` at ``address``, stamped ``now_wall``."""
        raw_address = address.encode("utf-8")
        if len(node_id) != 16 or len(raw_address) > 255:
            raise ValueError("a beacon carries a 16-byte id and an address of <= 255 bytes")
        body = (
            _HEAD.pack(
                MAGIC, self._tag, node_id, int(now_wall * 1000), os.urandom(8), len(raw_address)
            )
            + raw_address
        )
        return body + self._mac(body)

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def open(self, data: bytes, now_wall: float, now: float) -> Beacon | None:
        """Verify a received datagram; None (counted) if it is not a fresh beacon of ours.

        ``now_wall`` is the wall clock (for the sender's stamp), ``now`` a
        monotonic clock (for rate limits).
        """
        if len(data) < _HEAD.size + _MAC_SIZE or len(data) > MAX_BEACON:
            self._refuse("size")
            return None
        magic, tag, node_id, stamp, _nonce, length = _HEAD.unpack_from(data)
        if magic != MAGIC or len(data) != _HEAD.size + length + _MAC_SIZE:
            self._refuse("format")
            return None
        if tag != self._tag:
            self._refuse("other network")
            return None
        body, mac = data[:-_MAC_SIZE], data[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(body)):
            self._refuse("authentication")
            return None
        if abs(stamp / 1000 - now_wall) > self.max_skew:
            self._refuse("stale")
            return None
        last = self._last.get(node_id)
        if last is not None:
            if stamp <= last[0]:
                self._refuse("replay")
                return None
            if now - last[1] < self.per_node_interval:
                self._refuse("rate")
                return None
        if not self._take_token(now):
            self._refuse("rate")
            return None
        try:
            address = body[_HEAD.size :].decode("utf-8")
        except UnicodeDecodeError:
            self._refuse("format")
            return None
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[node_id] = (stamp, now)
        return Beacon(node_id, address, stamp / 1000)

    def _take_token(self, now: float) -> bool:
        if self._refilled_at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

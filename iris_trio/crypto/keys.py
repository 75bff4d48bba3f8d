"""Network keys and networks: the unit of trust.

Every node holding the same network name and the same 32-byte network key is a
member of one network; the key is the Noise pre-shared key and the name is
bound into the handshake prologue, so a wrong key or name yields no session.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from pathlib import Path
from typing import Final

from nacl import pwhash
from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from ..errors import KeyFormatError
from ._der import rsa_private_key_der

__all__ = [
    "DEV_NETWORK",
    "DEV_NETWORK_NAME",
    "PROTOCOL_VERSION",
    "Network",
    "NetworkKey",
]

KEY_SIZE: Final = 32
#: Protocol version string, bound into every handshake.
PROTOCOL_VERSION: Final = "iris-trio/1"
#: Name of the loopback-only development network.
DEV_NETWORK_NAME: Final = "iris-trio-dev"
_HEX = re.compile(rb"[0-9a-fA-F]{64}")
_MAX_KEY_FILE = 1 << 20


def _hash(data: bytes, size: int, person: bytes) -> bytes:
    digest: bytes = blake2b(data, digest_size=size, person=person, encoder=RawEncoder)
    return digest


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkKey:
    """A 32-byte network key. Its ``repr`` never shows the secret."""

    secret: bytes = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if type(self.secret) is not bytes or len(self.secret) != KEY_SIZE:
            raise KeyFormatError("a network key is exactly 32 bytes")

    def __repr__(self) -> str:
        return f"NetworkKey(fingerprint={self.fingerprint()!r})"

    def fingerprint(self) -> str:
        """A short, non-secret identifier of the key (16 hex digits) for logs."""
        return _hash(self.secret, 8, b"iris-trio-fpr").hex()

    @classmethod
    def generate(cls) -> NetworkKey:
        """A fresh random key."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_bytes(cls, data: bytes) -> NetworkKey:
        """Parse a key given as 32 raw bytes, 64 hex digits or base64 of 32 bytes.

        Surrounding whitespace is ignored for the text forms.

        Raises:
            KeyFormatError: ``data`` is none of the three forms.
        """
        if len(data) == KEY_SIZE:
            return cls(bytes(data))
        text = data.strip()
        if _HEX.fullmatch(text):
            return cls(bytes.fromhex(text.decode("ascii")))
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) == KEY_SIZE:
            return cls(decoded)
        raise KeyFormatError(
            f"a key is 32 raw bytes, 64 hex digits or base64 of 32 bytes (got {len(data)} bytes)"
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> NetworkKey:
        """Load a key file holding raw, hex or base64 key material.

        Raises:
            KeyFormatError: the file is not a key; OSError: it cannot be read.
        """
        data = _read_small_file(path)
        return cls.from_bytes(data)

    @classmethod
    def from_passphrase(cls, passphrase: str | bytes, network: str) -> NetworkKey:
        """Derive a key from a passphrase with argon2id.

        The salt is ``BLAKE2b-128(person="iris-trio-salt", data=network name)``, so
        the same passphrase gives different keys on differently named networks,
        and every node of one network derives the same key with no extra input.
        Costs are libsodium's "interactive" limits (about 64 MiB and 0.1 s).

        It blocks for that time (not a checkpoint: cancellation cannot stop it);
        in a running trio program, derive the key before the node starts or
        with ``await trio.to_thread.run_sync(NetworkKey.from_passphrase, ...)``.

        Raises:
            KeyFormatError: the passphrase is empty.
        """
        secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        if not secret:
            raise KeyFormatError("the passphrase is empty")
        salt = _hash(network.encode("utf-8"), 16, b"iris-trio-salt")
        key: bytes = pwhash.argon2id.kdf(
            KEY_SIZE,
            secret,
            salt,
            opslimit=pwhash.argon2id.OPSLIMIT_INTERACTIVE,
            memlimit=pwhash.argon2id.MEMLIMIT_INTERACTIVE,
        )
        return cls(key)

    @classmethod
    def from_rsa_key(cls, data: bytes) -> NetworkKey:
        """Derive a key from an Iris RSA private key (PEM or DER, PKCS#1 or PKCS#8).

        The key is ``BLAKE2b-256(person="iris-trio-rsa", data=PKCS#1 DER bytes)``;
        the PEM and DER forms of one RSA key give the same network key.

        Raises:
            KeyFormatError: ``data`` is not an unencrypted RSA private key.
        """
        return cls(_hash(rsa_private_key_der(data), KEY_SIZE, b"iris-trio-rsa"))

    @classmethod
    def from_rsa_file(cls, path: str | os.PathLike[str]) -> NetworkKey:
        """:meth:`from_rsa_key` on the contents of ``path``."""
        return cls.from_rsa_key(_read_small_file(path))

    @classmethod
    def dev(cls) -> NetworkKey:
        """The published, NOT secret key of the loopback-only development network."""
        return cls(
            _hash(b"iris-trio development network: not a secret", KEY_SIZE, b"iris-trio-dev")
        )


def _read_small_file(path: str | os.PathLike[str]) -> bytes:
    file = Path(path)
    size = file.stat().st_size
    if size > _MAX_KEY_FILE:
        raise KeyFormatError(f"{file} is {size} bytes: too large to be a key file")
    return file.read_bytes()


@dataclasses.dataclass(frozen=True, slots=True)
class Network:
    """A network: its name and key, plus the protocol version both sides must share.

    Attributes:
        name: the network name, bound into every handshake (1-255 UTF-8 bytes).
        key: the network key (the Noise pre-shared key).
        protocol: the protocol version string; only tests change it.
    """

    name: str
    key: NetworkKey
    protocol: str = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        encoded = self.name.encode("utf-8")
        if not 1 <= len(encoded) <= 255 or "\x00" in self.name:
            raise KeyFormatError("a network name is 1-255 UTF-8 bytes without NUL")

    @property
    def is_dev(self) -> bool:
        """True for the development network (its key is public)."""
        return self.name == DEV_NETWORK_NAME and self.key == NetworkKey.dev()

    def prologue(self) -> bytes:
        """Noise prologue: protocol version, one zero byte, the network name (UTF-8)."""
        return self.protocol.encode("ascii") + b"\x00" + self.name.encode("utf-8")


#: The development network: loopback only, zero configuration, not secret.
DEV_NETWORK: Final = Network(DEV_NETWORK_NAME, NetworkKey.dev())

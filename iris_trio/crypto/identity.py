"""Node identity: a static X25519 key pair; the node id is derived from it.

The node id is ``BLAKE2b-128(static public key)``: nobody chooses their overlay
position, and a peer's id is proven by the Noise handshake that proves its key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from ..errors import KeyFormatError
from .noise import generate_private_key, public_key

__all__ = ["NODE_ID_SIZE", "NodeIdentity", "node_id_of"]

NODE_ID_SIZE: Final = 16


def node_id_of(static_public_key: bytes) -> bytes:
    """The 16-byte node id of a static public key."""
    digest: bytes = blake2b(static_public_key, digest_size=NODE_ID_SIZE, encoder=RawEncoder)
    return digest


class NodeIdentity:
    """A node's long-term key pair.

    Create one with :meth:`generate` or :meth:`load`; keep it across restarts to
    keep the node's overlay id.
    """

    __slots__ = ("node_id", "private_key", "public_key")

    def __init__(self, private_key: bytes) -> None:
        if type(private_key) is not bytes or len(private_key) != 32:
            raise KeyFormatError("an X25519 private key is 32 bytes")
        self.private_key = private_key
        self.public_key = public_key(private_key)
        self.node_id = node_id_of(self.public_key)

    def __repr__(self) -> str:
        return f"NodeIdentity(node_id={self.node_id.hex()})"

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random identity."""
        return cls(generate_private_key())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeIdentity:
        """Load an identity file written by :meth:`save` (64 hex digits).

        Raises:
            KeyFormatError: the file does not hold a private key.
            OSError: it cannot be read.
        """
        text = Path(path).read_bytes()[:1024].strip()
        try:
            key = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise KeyFormatError(f"{path}: not a hex-encoded private key") from None
        return cls(key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key as hex to ``path``, readable by the owner only."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(self.private_key.hex() + "\n")

"""Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b as a sans-IO state machine.

A direct rendering of the Noise Protocol Framework, revision 34, restricted to
the one protocol iris_trio speaks::

    XXpsk0:
      -> psk, e
      <- e, ee, s, es
      -> s, se

Primitives come from libsodium through PyNaCl: X25519, ChaCha20-Poly1305 IETF
(nonce = 4 zero bytes + 64-bit little-endian counter) and BLAKE2b-512 with the
spec's HMAC/HKDF construction. The pre-shared key is mixed in first, so the very
first message is authenticated by it: a responder with a different key,
network name or protocol version (both bound in the prologue) rejects message 1
after one AEAD check and before any Diffie-Hellman work.

Nothing here does I/O; :class:`HandshakeState` consumes and produces bytes.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from nacl import bindings
from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from ..errors import HandshakeError
from . import aead

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_NONCE",
    "PROTOCOL_NAME",
    "CipherState",
    "HandshakeState",
    "NonceExhaustedError",
    "generate_private_key",
    "public_key",
]

PROTOCOL_NAME: Final = b"Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
HASH_SIZE: Final = 64
BLOCK_SIZE: Final = 128
DH_SIZE: Final = 32
PSK_SIZE: Final = 32
MAX_MESSAGE_SIZE: Final = 65535
#: The spec reserves 2**64 - 1; a CipherState refuses to use it.
MAX_NONCE: Final = 2**64 - 1

_PATTERN: Final = (("psk", "e"), ("e", "ee", "s", "es"), ("s", "se"))
#: Plain XX (no PSK), supported only so the shared machinery can be checked
#: against the published Noise test vectors, which do not cover XXpsk0.
PLAIN_XX_PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
_PLAIN_PATTERN: Final = (("e",), ("e", "ee", "s", "es"), ("s", "se"))
_NONCE = struct.Struct("<4xQ")
_ZERO_DH = bytes(DH_SIZE)
_ZERO_KEY = bytes(32)
_IPAD = bytes([0x36]) * BLOCK_SIZE
_OPAD = bytes([0x5C]) * BLOCK_SIZE


class NonceExhaustedError(Exception):
    """The cipher state has used every nonce; the session must end (or rekey earlier)."""


def _hash(data: bytes) -> bytes:
    digest: bytes = blake2b(data, digest_size=HASH_SIZE, encoder=RawEncoder)
    return digest


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _hmac(key: bytes, data: bytes) -> bytes:
    if len(key) > BLOCK_SIZE:
        key = _hash(key)
    key = key.ljust(BLOCK_SIZE, b"\x00")
    return _hash(_xor(key, _OPAD) + _hash(_xor(key, _IPAD) + data))


def _hkdf(chaining_key: bytes, material: bytes, outputs: int) -> list[bytes]:
    temp_key = _hmac(chaining_key, material)
    out = [_hmac(temp_key, b"\x01")]
    for i in range(2, outputs + 1):
        out.append(_hmac(temp_key, out[-1] + bytes([i])))
    return out


def generate_private_key() -> bytes:
    """A fresh X25519 private key (32 random bytes; libsodium clamps on use)."""
    return os.urandom(DH_SIZE)


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of ``private_key``."""
    if len(private_key) != DH_SIZE:
        raise ValueError("an X25519 private key is 32 bytes")
    result: bytes = bindings.crypto_scalarmult_base(private_key)
    return result


class CipherState:
    """A ChaChaPoly key with its 64-bit counter nonce (Noise section 5.1)."""

    __slots__ = ("_key", "nonce")

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != aead.KEY_SIZE:
            raise ValueError("a cipher key is 32 bytes")
        self._key = key
        self.nonce = 0

    @property
    def has_key(self) -> bool:
        """True once a key is set."""
        return self._key is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Encrypt under the next nonce; identity when no key is set.

        Raises:
            NonceExhaustedError: the reserved last nonce was reached.
        """
        key = self._key
        if key is None:
            return bytes(plaintext)
        nonce = self.nonce
        if nonce >= MAX_NONCE:
            raise NonceExhaustedError("nonce space exhausted")
        ciphertext = aead.encrypt(key, _NONCE.pack(nonce), ad, plaintext)
        self.nonce = nonce + 1
        return ciphertext

    def encrypt_into(self, ad: bytes, plaintext: aead.Buffer, out: bytearray, offset: int) -> int:
        """:meth:`encrypt_with_ad` writing into ``out`` at ``offset`` (a key must be set).

        Returns the ciphertext size.
        """
        key, nonce = self._key_and_nonce()
        size = aead.encrypt_into(key, nonce, ad, plaintext, out, offset)
        self.nonce += 1
        return size

    def decrypt_into(self, ad: bytes, ciphertext: aead.Buffer, out: bytearray, offset: int) -> int:
        """:meth:`decrypt_with_ad` writing into ``out`` at ``offset`` (a key must be set).

        Returns the plaintext size; the nonce advances only on success.
        """
        key, nonce = self._key_and_nonce()
        size = aead.decrypt_into(key, nonce, ad, ciphertext, out, offset)
        self.nonce += 1
        return size

    def _key_and_nonce(self) -> tuple[bytes, bytes]:
        if self._key is None:
            raise ValueError("no key set")
        if self.nonce >= MAX_NONCE:
            raise NonceExhaustedError("nonce space exhausted")
        return self._key, _NONCE.pack(self.nonce)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Authenticate and decrypt under the next nonce; the nonce advances only on success.

        Raises:
            aead.AuthenticationError: the ciphertext does not authenticate.
            NonceExhaustedError: the reserved last nonce was reached.
        """
        key = self._key
        if key is None:
            return bytes(ciphertext)
        nonce = self.nonce
        if nonce >= MAX_NONCE:
            raise NonceExhaustedError("nonce space exhausted")
        plaintext = aead.decrypt(key, _NONCE.pack(nonce), ad, ciphertext)
        self.nonce = nonce + 1
        return plaintext

    def rekey(self) -> None:
        """Replace the key with ENCRYPT(k, 2**64-1, "", zeros) truncated to 32 bytes.

        The nonce counter is left as it is, as the spec prescribes.
        """
        if self._key is None:
            raise ValueError("cannot rekey a cipher state without a key")
        self._key = aead.encrypt(self._key, _NONCE.pack(MAX_NONCE), b"", _ZERO_KEY)[:32]


class _SymmetricState:
    """Noise section 5.2: chaining key, handshake hash and the current cipher."""

    __slots__ = ("chaining_key", "cipher", "handshake_hash")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_SIZE:
            self.handshake_hash = protocol_name.ljust(HASH_SIZE, b"\x00")
        else:
            self.handshake_hash = _hash(protocol_name)
        self.chaining_key = self.handshake_hash
        self.cipher = CipherState()

    def mix_key(self, material: bytes) -> None:
        self.chaining_key, temp_key = _hkdf(self.chaining_key, material, 2)
        self.cipher = CipherState(temp_key[:32])

    def mix_hash(self, data: bytes) -> None:
        self.handshake_hash = _hash(self.handshake_hash + data)

    def mix_key_and_hash(self, material: bytes) -> None:
        self.chaining_key, temp_hash, temp_key = _hkdf(self.chaining_key, material, 3)
        self.mix_hash(temp_hash)
        self.cipher = CipherState(temp_key[:32])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.handshake_hash, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        try:
            plaintext = self.cipher.decrypt_with_ad(self.handshake_hash, ciphertext)
        except aead.AuthenticationError:
            raise HandshakeError("handshake message failed to authenticate") from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        first, second = _hkdf(self.chaining_key, b"", 2)
        return CipherState(first[:32]), CipherState(second[:32])


class HandshakeState:
    """One side of an XXpsk0 handshake (Noise section 5.3).

    Args:
        initiator: True for the side that sends message 1.
        prologue: bytes both sides must agree on (protocol version, network name).
        psk: the 32-byte pre-shared key (the network key). ``None`` selects plain
            ``Noise_XX`` (used only to check against published test vectors).
        static_private_key: this side's long-term X25519 private key.
        static_public_key: its public key, when already known (saves a scalar
            multiplication per handshake).
        ephemeral_private_key: for test vectors only; normally generated when needed.

    Use :meth:`write_message` and :meth:`read_message` alternately as the
    pattern dictates (:attr:`my_turn` tells whose turn it is); after the third
    message :attr:`complete` is true and :meth:`split` gives the transport
    cipher states.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        prologue: bytes,
        psk: bytes | None,
        static_private_key: bytes,
        static_public_key: bytes | None = None,
        ephemeral_private_key: bytes | None = None,
    ) -> None:
        if psk is not None and len(psk) != PSK_SIZE:
            raise ValueError("the pre-shared key is 32 bytes")
        self.initiator = initiator
        self._pattern = _PATTERN if psk is not None else _PLAIN_PATTERN
        self._psk = psk
        self._static_private = static_private_key
        self._static_public = static_public_key or public_key(static_private_key)
        self._ephemeral_private = ephemeral_private_key
        self._ephemeral_public: bytes | None = None
        self.remote_static: bytes | None = None
        self._remote_ephemeral: bytes | None = None
        self._symmetric = _SymmetricState(
            PROTOCOL_NAME if psk is not None else PLAIN_XX_PROTOCOL_NAME
        )
        self._symmetric.mix_hash(prologue)
        self._message_index = 0
        #: Count of X25519 operations performed (key generation included).
        self.dh_operations = 0

    @property
    def complete(self) -> bool:
        """True once all three handshake messages have been processed."""
        return self._message_index == len(self._pattern)

    @property
    def my_turn(self) -> bool:
        """True when the next step is :meth:`write_message` for this side."""
        return (self._message_index % 2 == 0) == self.initiator

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash ``h``; both sides hold the same value when complete."""
        return self._symmetric.handshake_hash

    def _dh(self, private_key: bytes, public: bytes) -> bytes:
        self.dh_operations += 1
        try:
            shared: bytes = bindings.crypto_scalarmult(private_key, public)
        except Exception as exc:  # libsodium refuses low-order points on some builds
            raise HandshakeError("invalid Diffie-Hellman public key") from exc
        if shared == _ZERO_DH:
            raise HandshakeError("Diffie-Hellman result is all zeros (low-order point)")
        return shared

    def _mix_dh(self, token: str) -> None:
        symmetric = self._symmetric
        remote_e, remote_s = self._remote_ephemeral, self.remote_static
        e, s = self._ephemeral_private, self._static_private
        assert e is not None and remote_e is not None
        if token == "ee":
            symmetric.mix_key(self._dh(e, remote_e))
        elif (token == "es") == self.initiator:  # initiator "es" or responder "se"
            assert remote_s is not None
            symmetric.mix_key(self._dh(e, remote_s))
        else:  # initiator "se" or responder "es"
            symmetric.mix_key(self._dh(s, remote_e))

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying ``payload`` (encrypted when keyed)."""
        if self.complete or not self.my_turn:
            raise RuntimeError("not this side's turn to write")
        symmetric = self._symmetric
        out = bytearray()
        for token in self._pattern[self._message_index]:
            if token == "psk":
                symmetric.mix_key_and_hash(self._psk)  # type: ignore[arg-type]
            elif token == "e":
                if self._ephemeral_private is None:
                    self._ephemeral_private = generate_private_key()
                self.dh_operations += 1
                self._ephemeral_public = public_key(self._ephemeral_private)
                out += self._ephemeral_public
                symmetric.mix_hash(self._ephemeral_public)
                if self._psk is not None:  # psk handshakes mix e into the key too
                    symmetric.mix_key(self._ephemeral_public)
            elif token == "s":
                out += symmetric.encrypt_and_hash(self._static_public)
            else:
                self._mix_dh(token)
        out += symmetric.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_SIZE:
            raise ValueError("handshake message exceeds 65535 bytes")
        self._message_index += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload.

        Raises:
            HandshakeError: the message is malformed or does not authenticate
                (for message 1: a different key, network or version).
        """
        if self.complete or self.my_turn:
            raise RuntimeError("not this side's turn to read")
        if len(message) > MAX_MESSAGE_SIZE:
            raise HandshakeError("handshake message exceeds 65535 bytes")
        symmetric = self._symmetric
        view = memoryview(message)
        for token in self._pattern[self._message_index]:
            if token == "psk":
                symmetric.mix_key_and_hash(self._psk)  # type: ignore[arg-type]
            elif token == "e":
                if len(view) < DH_SIZE:
                    raise HandshakeError("handshake message too short")
                self._remote_ephemeral = bytes(view[:DH_SIZE])
                view = view[DH_SIZE:]
                symmetric.mix_hash(self._remote_ephemeral)
                if self._psk is not None:
                    symmetric.mix_key(self._remote_ephemeral)
            elif token == "s":
                size = DH_SIZE + (aead.TAG_SIZE if symmetric.cipher.has_key else 0)
                if len(view) < size:
                    raise HandshakeError("handshake message too short")
                self.remote_static = symmetric.decrypt_and_hash(bytes(view[:size]))
                view = view[size:]
            else:
                self._mix_dh(token)
        if symmetric.cipher.has_key and len(view) < aead.TAG_SIZE:
            raise HandshakeError("handshake message too short")
        payload = symmetric.decrypt_and_hash(bytes(view))
        self._message_index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Return ``(send, receive)`` cipher states for this side.

        Raises:
            RuntimeError: the handshake is not complete.
        """
        if not self.complete:
            raise RuntimeError("handshake not complete")
        initiator_to_responder, responder_to_initiator = self._symmetric.split()
        if self.initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder

"""ChaCha20-Poly1305 (IETF) on libsodium through PyNaCl.

PyNaCl's ``nacl.bindings`` wrappers cost several microseconds per call in
argument checking; the records of a busy link are encrypted one call each, so
this module calls the same libsodium functions through PyNaCl's own cffi
handle when it is available, and falls back to ``nacl.bindings`` otherwise.
Both paths are the same primitive; a test checks they agree byte for byte.
"""

from __future__ import annotations

from typing import Final

from nacl import bindings
from nacl.exceptions import CryptoError

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "AuthenticationError",
    "decrypt",
    "decrypt_into",
    "encrypt",
    "encrypt_into",
]

Buffer = bytes | bytearray | memoryview

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16


class AuthenticationError(Exception):
    """The ciphertext, its associated data, key or nonce did not authenticate."""


def _bindings_encrypt(
    key: bytes, nonce: bytes, ad: bytes, plaintext: bytes | bytearray | memoryview
) -> bytes:
    result: bytes = bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(plaintext), ad or None, nonce, key
    )
    return result


def _bindings_decrypt(key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
    try:
        result: bytes = bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            bytes(ciphertext), ad or None, nonce, key
        )
    except CryptoError:
        raise AuthenticationError("decryption failed") from None
    return result


def _bindings_encrypt_into(
    key: bytes, nonce: bytes, ad: bytes, plaintext: Buffer, out: bytearray, offset: int
) -> int:
    ciphertext = _bindings_encrypt(key, nonce, ad, plaintext)
    out[offset : offset + len(ciphertext)] = ciphertext
    return len(ciphertext)


def _bindings_decrypt_into(
    key: bytes, nonce: bytes, ad: bytes, ciphertext: Buffer, out: bytearray, offset: int
) -> int:
    plaintext = _bindings_decrypt(key, nonce, ad, bytes(ciphertext))
    out[offset : offset + len(plaintext)] = plaintext
    return len(plaintext)


try:
    from nacl._sodium import ffi as _ffi  # PyNaCl's own cffi module
    from nacl._sodium import lib as _lib

    _NULL = _ffi.NULL
    _encrypt_c = _lib.crypto_aead_chacha20poly1305_ietf_encrypt
    _decrypt_c = _lib.crypto_aead_chacha20poly1305_ietf_decrypt
    _new = _ffi.new
    _buffer = _ffi.buffer
    _from_buffer = _ffi.from_buffer

    def _cffi_encrypt(
        key: bytes, nonce: bytes, ad: bytes, plaintext: bytes | bytearray | memoryview
    ) -> bytes:
        size = len(plaintext) + TAG_SIZE
        out = _new("unsigned char[]", size)
        _encrypt_c(
            out, _NULL, _from_buffer(plaintext), len(plaintext), ad, len(ad), _NULL, nonce, key
        )
        return _buffer(out, size)[:]  # type: ignore[no-any-return]

    def _cffi_decrypt(key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
        size = len(ciphertext) - TAG_SIZE
        if size < 0:
            raise AuthenticationError("ciphertext shorter than its tag")
        out = _new("unsigned char[]", max(size, 1))
        status = _decrypt_c(
            out, _NULL, _NULL, _from_buffer(ciphertext), len(ciphertext), ad, len(ad), nonce, key
        )
        if status != 0:
            raise AuthenticationError("decryption failed")
        return _buffer(out, size)[:]  # type: ignore[no-any-return]

    def _cffi_encrypt_into(
        key: bytes, nonce: bytes, ad: bytes, plaintext: Buffer, out: bytearray, offset: int
    ) -> int:
        size = len(plaintext) + TAG_SIZE
        if offset < 0 or offset + size > len(out):
            raise ValueError("output buffer too small")
        target = _from_buffer("unsigned char[]", out, require_writable=True) + offset
        _encrypt_c(
            target, _NULL, _from_buffer(plaintext), len(plaintext), ad, len(ad), _NULL, nonce, key
        )
        return size

    def _cffi_decrypt_into(
        key: bytes, nonce: bytes, ad: bytes, ciphertext: Buffer, out: bytearray, offset: int
    ) -> int:
        size = len(ciphertext) - TAG_SIZE
        if size < 0:
            raise AuthenticationError("ciphertext shorter than its tag")
        if offset < 0 or offset + size > len(out):
            raise ValueError("output buffer too small")
        target = _from_buffer("unsigned char[]", out, require_writable=True) + offset
        status = _decrypt_c(
            target, _NULL, _NULL, _from_buffer(ciphertext), len(ciphertext), ad, len(ad), nonce, key
        )
        if status != 0:
            raise AuthenticationError("decryption failed")
        return size

    encrypt = _cffi_encrypt
    decrypt = _cffi_decrypt
    encrypt_into = _cffi_encrypt_into
    decrypt_into = _cffi_decrypt_into
except (ImportError, AttributeError):  # pragma: no cover - depends on the PyNaCl build
    encrypt = _bindings_encrypt
    decrypt = _bindings_decrypt
    encrypt_into = _bindings_encrypt_into
    decrypt_into = _bindings_decrypt_into

encrypt.__doc__ = "Encrypt ``plaintext`` and return ciphertext with its 16-byte tag appended."
decrypt.__doc__ = "Authenticate and decrypt; raises :class:`AuthenticationError` on failure."
encrypt_into.__doc__ = "Encrypt into ``out`` at ``offset``; returns the ciphertext size."
decrypt_into.__doc__ = "Decrypt into ``out`` at ``offset``; returns the plaintext size."

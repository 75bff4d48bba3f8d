"""Just enough DER to recognise an RSA private key and find its PKCS#1 bytes.

Iris deployments distribute an RSA private key per network; iris_trio derives
its network key from that file. Both PKCS#1 (``RSA PRIVATE KEY``) and PKCS#8
(``PRIVATE KEY`` wrapping rsaEncryption) are accepted, in PEM or DER; both
forms of one key yield the same PKCS#1 DER bytes, hence the same network key.
"""

from __future__ import annotations

import base64
import binascii
import re

from ..errors import KeyFormatError

__all__ = ["rsa_private_key_der"]

_RSA_ENCRYPTION_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
_PEM = re.compile(rb"-----BEGIN (RSA PRIVATE KEY|PRIVATE KEY)-----(.*?)-----END \1-----", re.DOTALL)
_SEQUENCE, _INTEGER, _OCTET_STRING, _OID, _NULL = 0x30, 0x02, 0x04, 0x06, 0x05


def _read(data: bytes, position: int) -> tuple[int, bytes, int]:
    """Read one TLV at ``position``; return (tag, value, next position)."""
    if position + 2 > len(data):
        raise KeyFormatError("truncated DER")
    tag = data[position]
    length = data[position + 1]
    position += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or position + count > len(data):
            raise KeyFormatError("unsupported DER length")
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    end = position + length
    if end > len(data):
        raise KeyFormatError("truncated DER")
    return tag, data[position:end], end


def _check_pkcs1(der: bytes) -> bytes:
    tag, body, end = _read(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise KeyFormatError("not an RSA private key (expected one DER SEQUENCE)")
    position = 0
    integers = []
    while position < len(body):
        tag, value, position = _read(body, position)
        if tag != _INTEGER:
            raise KeyFormatError("not an RSA private key (non-integer field)")
        integers.append(value)
    # version, n, e, d, p, q, dp, dq, qinv
    if len(integers) != 9 or integers[0] != b"\x00":
        raise KeyFormatError("not a two-prime RSA private key")
    modulus_bits = len(integers[1].lstrip(b"\x00")) * 8
    if modulus_bits < 1024:
        raise KeyFormatError(f"RSA modulus of about {modulus_bits} bits is too small")
    return der


def _unwrap_pkcs8(der: bytes) -> bytes:
    tag, body, end = _read(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise KeyFormatError("not a PKCS#8 private key")
    tag, version, position = _read(body, 0)
    if tag != _INTEGER or version != b"\x00":
        raise KeyFormatError("unsupported PKCS#8 version")
    tag, algorithm, position = _read(body, position)
    if tag != _SEQUENCE:
        raise KeyFormatError("malformed PKCS#8 algorithm identifier")
    tag, oid, _ = _read(algorithm, 0)
    if tag != _OID or oid != _RSA_ENCRYPTION_OID:
        raise KeyFormatError("the PKCS#8 key is not an RSA key")
    tag, inner, _ = _read(body, position)
    if tag != _OCTET_STRING:
        raise KeyFormatError("malformed PKCS#8 private key")
    return inner


def rsa_private_key_der(data: bytes) -> bytes:
    """Return the PKCS#1 DER bytes of the RSA private key in ``data`` (PEM or DER).

    Raises:
        KeyFormatError: ``data`` is not an unencrypted RSA private key.
    """
    match = _PEM.search(data)
    if match is not None:
        if b"ENCRYPTED" in match.group(2)[:200]:
            raise KeyFormatError("encrypted PEM keys are not supported; decrypt it first")
        try:
            der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
        except binascii.Error as exc:
            raise KeyFormatError(f"bad base64 in PEM: {exc}") from None
        pkcs8 = match.group(1) == b"PRIVATE KEY"
    elif data[:1] == bytes([_SEQUENCE]):
        der = data
        # PKCS#8 starts with INTEGER 0 then a SEQUENCE; PKCS#1 with INTEGER 0 then INTEGER n.
        _, body, _ = _read(der, 0)
        _, _, position = _read(body, 0)
        pkcs8 = position < len(body) and body[position] == _SEQUENCE
    else:
        raise KeyFormatError("not a PEM or DER RSA private key")
    return _check_pkcs1(_unwrap_pkcs8(der) if pkcs8 else der)

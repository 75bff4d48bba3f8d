"""Network keys and node identities."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iris_trio.crypto import DEV_NETWORK, Network, NetworkKey, NodeIdentity, node_id_of
from iris_trio.errors import KeyFormatError

SECRET = bytes(range(32))


@pytest.mark.parametrize(
    "content",
    [
        SECRET,
        SECRET.hex().encode(),
        SECRET.hex().upper().encode() + b"\n",
        base64.b64encode(SECRET),
        b"  " + base64.b64encode(SECRET) + b"\r\n",
    ],
    ids=["raw", "hex", "hex-upper-newline", "base64", "base64-padded"],
)
def test_key_files_in_every_form(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "network.key"
    path.write_bytes(content)
    assert NetworkKey.from_file(path).secret == SECRET


@pytest.mark.parametrize(
    "content",
    [b"", b"short", SECRET.hex()[:-2].encode(), b"z" * 64, bytes(33)],
    ids=["empty", "short", "hex-62", "not-hex", "raw-33"],
)
def test_bad_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFormatError):
        NetworkKey.from_file(path)


def test_oversized_key_files_are_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.key"
    path.write_bytes(bytes(2 << 20))
    with pytest.raises(KeyFormatError, match="too large"):
        NetworkKey.from_file(path)


def test_passphrase_keys_depend_on_passphrase_and_network() -> None:
    a = NetworkKey.from_passphrase("correct horse", "prod")
    assert a == NetworkKey.from_passphrase(b"correct horse", "prod")
    assert a != NetworkKey.from_passphrase("correct horse", "staging")
    assert a != NetworkKey.from_passphrase("correct horsf", "prod")
    with pytest.raises(KeyFormatError):
        NetworkKey.from_passphrase("", "prod")


def _rsa_key_forms() -> dict[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    none = serialization.NoEncryption()
    return {
        "pkcs1-pem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none
        ),
        "pkcs1-der": key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, none
        ),
        "pkcs8-pem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none
        ),
        "pkcs8-der": key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, none
        ),
    }


def test_rsa_key_files_give_one_network_key_whatever_the_encoding(tmp_path: Path) -> None:
    forms = _rsa_key_forms()
    keys = set()
    for name, content in forms.items():
        path = tmp_path / name
        path.write_bytes(content)
        keys.add(NetworkKey.from_rsa_file(path))
    assert len(keys) == 1
    (other,) = {NetworkKey.from_rsa_key(_rsa_key_forms()["pkcs1-pem"])}
    assert other not in keys


def test_non_rsa_and_encrypted_keys_are_refused() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    encrypted = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pw"),
    )
    candidates = [
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        encrypted,
        b"-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n",
        b"\x30\x03\x02\x01\x00",
        b"hello",
        os.urandom(300),
    ]
    for content in candidates:
        with pytest.raises(KeyFormatError):
            NetworkKey.from_rsa_key(content)


def test_key_repr_hides_the_secret() -> None:
    key = NetworkKey(SECRET)
    assert SECRET.hex() not in repr(key)
    assert key.fingerprint() in repr(key)


def test_dev_network_is_fixed_and_marked() -> None:
    assert DEV_NETWORK.key == NetworkKey.dev()
    assert DEV_NETWORK.is_dev
    assert not Network(DEV_NETWORK.name, NetworkKey.generate()).is_dev
    assert DEV_NETWORK.prologue() == b"iris-trio/1\x00iris-trio-dev"


@pytest.mark.parametrize("name", ["", "a\x00b", "x" * 256])
def test_network_names_are_validated(name: str) -> None:
    with pytest.raises(KeyFormatError):
        Network(name, NetworkKey.generate())


def test_identity_round_trips_through_a_private_file(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    path = tmp_path / "node.id"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = NodeIdentity.load(path)
    assert loaded.node_id == identity.node_id == node_id_of(identity.public_key)
    assert len(identity.node_id) == 16
    path.write_text("not a key")
    with pytest.raises(KeyFormatError):
        NodeIdentity.load(path)

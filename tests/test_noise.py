"""Noise XXpsk0: published vectors, interoperability with noiseprotocol, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from iris_trio.crypto import aead
from iris_trio.crypto.noise import (
    PROTOCOL_NAME,
    CipherState,
    HandshakeState,
    NonceExhaustedError,
    generate_private_key,
)
from iris_trio.errors import HandshakeError

VECTOR = json.loads(
    (Path(__file__).parent / "vectors" / "cacophony_xx_25519_chachapoly_blake2b.json").read_text()
)
PSK = bytes(range(32))
PROLOGUE = b"iris-trio/1\x00test-net"


def test_shared_machinery_matches_the_published_xx_vector() -> None:
    """Cacophony's Noise_XX_25519_ChaChaPoly_BLAKE2b vector: same hash, HKDF, cipher, DH.

    The published vector sets (cacophony, snow) cover XXpsk3 but not XXpsk0;
    the psk0 position is checked against noiseprotocol below.
    """
    v = {k: bytes.fromhex(x) for k, x in VECTOR.items() if k.startswith(("init_", "resp_"))}
    initiator = HandshakeState(
        initiator=True,
        prologue=v["init_prologue"],
        psk=None,
        static_private_key=v["init_static"],
        ephemeral_private_key=v["init_ephemeral"],
    )
    responder = HandshakeState(
        initiator=False,
        prologue=v["resp_prologue"],
        psk=None,
        static_private_key=v["resp_static"],
        ephemeral_private_key=v["resp_ephemeral"],
    )
    messages = VECTOR["messages"]
    sides = [(initiator, responder), (responder, initiator), (initiator, responder)]
    for (writer, reader), message in zip(sides, messages[:3], strict=True):
        payload = bytes.fromhex(message["payload"])
        ciphertext = writer.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert reader.read_message(ciphertext) == payload
    # Every ciphertext above carries h as associated data, so matching them checks
    # the transcript hash at each step. (The vector's "handshake_hash" field follows
    # another convention: noiseprotocol's final h agrees with ours, not with it.)
    assert initiator.handshake_hash == responder.handshake_hash
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    # Transport messages alternate, starting with the responder.
    transport = [(r_send, i_recv), (i_send, r_recv), (r_send, i_recv)]
    for (send, receive), message in zip(transport, messages[3:], strict=True):
        payload = bytes.fromhex(message["payload"])
        ciphertext = send.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert receive.decrypt_with_ad(b"", ciphertext) == payload


def _theirs(
    initiator: bool, private_key: bytes, psk: bytes = PSK, prologue: bytes = PROLOGUE
) -> NoiseConnection:
    connection = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(Keypair.STATIC, private_key)
    connection.set_psks(psk)
    connection.set_prologue(prologue)
    connection.start_handshake()
    return connection


@pytest.mark.parametrize("we_initiate", [True, False])
@settings(max_examples=10, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=2000), min_size=3, max_size=3),
    transport=st.lists(st.binary(max_size=5000), min_size=1, max_size=6),
)
def test_interoperates_with_noiseprotocol(
    we_initiate: bool, payloads: list[bytes], transport: list[bytes]
) -> None:
    ours = HandshakeState(
        initiator=we_initiate, prologue=PROLOGUE, psk=PSK, static_private_key=generate_private_key()
    )
    their_key = generate_private_key()
    theirs = _theirs(not we_initiate, their_key)
    for payload in payloads:
        if ours.my_turn:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(theirs.write_message(payload)) == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == theirs.noise_protocol.keypairs["s"].public_bytes
    send, receive = ours.split()
    for message in transport:
        assert theirs.decrypt(send.encrypt_with_ad(b"", message)) == message
        assert receive.decrypt_with_ad(b"", theirs.encrypt(message)) == message


def test_rekey_matches_noiseprotocol() -> None:
    ours = HandshakeState(
        initiator=True, prologue=PROLOGUE, psk=PSK, static_private_key=generate_private_key()
    )
    theirs = _theirs(False, generate_private_key())
    theirs.read_message(ours.write_message())
    ours.read_message(theirs.write_message())
    theirs.read_message(ours.write_message())
    send, receive = ours.split()
    send.rekey()
    theirs.rekey_inbound_cipher()
    receive.rekey()
    theirs.rekey_outbound_cipher()
    assert theirs.decrypt(send.encrypt_with_ad(b"", b"after rekey")) == b"after rekey"
    assert receive.decrypt_with_ad(b"", theirs.encrypt(b"back")) == b"back"


@pytest.mark.parametrize(
    ("psk", "prologue"),
    [(bytes(32), PROLOGUE), (PSK, b"iris-trio/1\x00other-net"), (PSK, b"iris-trio/2\x00test-net")],
    ids=["wrong-key", "wrong-network", "wrong-version"],
)
def test_mismatch_fails_on_message_one_without_any_dh(psk: bytes, prologue: bytes) -> None:
    initiator = HandshakeState(
        initiator=True, prologue=prologue, psk=psk, static_private_key=generate_private_key()
    )
    responder = HandshakeState(
        initiator=False, prologue=PROLOGUE, psk=PSK, static_private_key=generate_private_key()
    )
    first = initiator.write_message()
    with pytest.raises(HandshakeError):
        responder.read_message(first)
    assert responder.dh_operations == 0


def test_low_order_public_keys_are_rejected() -> None:
    initiator = HandshakeState(
        initiator=True, prologue=PROLOGUE, psk=PSK, static_private_key=generate_private_key()
    )
    responder = HandshakeState(
        initiator=False, prologue=PROLOGUE, psk=PSK, static_private_key=generate_private_key()
    )
    responder.read_message(initiator.write_message())
    reply = bytearray(responder.write_message())
    reply[:32] = bytes(32)  # the all-zero point: every DH result with it is zero
    with pytest.raises(HandshakeError):
        initiator.read_message(bytes(reply))


def test_out_of_turn_use_is_a_local_error() -> None:
    state = HandshakeState(
        initiator=False, prologue=b"", psk=PSK, static_private_key=generate_private_key()
    )
    with pytest.raises(RuntimeError):
        state.write_message()
    with pytest.raises(RuntimeError):
        state.split()


def test_cipher_state_refuses_the_reserved_nonce() -> None:
    cipher = CipherState(os.urandom(32))
    cipher.nonce = 2**64 - 2
    cipher.encrypt_with_ad(b"", b"last one")
    with pytest.raises(NonceExhaustedError):
        cipher.encrypt_with_ad(b"", b"no more")


def test_failed_decryption_does_not_advance_the_nonce() -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(key), CipherState(key)
    good = sender.encrypt_with_ad(b"", b"hello")
    with pytest.raises(aead.AuthenticationError):
        receiver.decrypt_with_ad(b"", good[:-1] + bytes([good[-1] ^ 1]))
    assert receiver.decrypt_with_ad(b"", good) == b"hello"


@given(st.binary(max_size=3000), st.binary(max_size=64))
def test_fast_aead_path_agrees_with_pynacl_bindings(plaintext: bytes, ad: bytes) -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    ciphertext = aead.encrypt(key, nonce, ad, plaintext)
    assert ciphertext == aead._bindings_encrypt(key, nonce, ad, plaintext)
    assert aead._bindings_decrypt(key, nonce, ad, ciphertext) == plaintext
    assert aead.decrypt(key, nonce, ad, ciphertext) == plaintext

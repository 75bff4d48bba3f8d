"""Cryptography: the Noise handshake, record ciphers, network keys, node identity.

Pure: no I/O beyond reading key files, no trio.
"""

from .identity import NodeIdentity as NodeIdentity
from .identity import node_id_of as node_id_of
from .keys import DEV_NETWORK as DEV_NETWORK
from .keys import PROTOCOL_VERSION as PROTOCOL_VERSION
from .keys import Network as Network
from .keys import NetworkKey as NetworkKey
from .noise import CipherState as CipherState
from .noise import HandshakeState as HandshakeState

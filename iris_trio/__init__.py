"""iris_trio: decentralized cloud messaging for Python, built on Trio.

Nodes join a peer-to-peer overlay with no broker and no configuration and
address *clusters by name*; the overlay does discovery, routing, load balancing
and encryption. This package currently provides the foundation: the strict
wire codec, the Noise handshake, network keys and node identities, and
encrypted links (see ``iris_trio.transport``).
"""

from .crypto.identity import NodeIdentity as NodeIdentity
from .crypto.keys import DEV_NETWORK as DEV_NETWORK
from .crypto.keys import Network as Network
from .crypto.keys import NetworkKey as NetworkKey
from .errors import ConfigError as ConfigError
from .errors import HandshakeError as HandshakeError
from .errors import IrisError as IrisError
from .errors import KeyFormatError as KeyFormatError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import ProtocolError as ProtocolError

__version__ = "0.1.0.dev0"

"""iris_trio: decentralized cloud messaging for Python, built on Trio.

Nodes join a peer-to-peer overlay with no broker and no configuration and
address *clusters by name*; the overlay does discovery, routing, load balancing
and encryption::

    async with iris_trio.join("echo") as node:
        async with node.subscribe("news") as events:
            await node.publish("news", b"hello")
            print(await events.receive())

Available so far: the overlay (Pastry routing, discovery, Scribe-like trees),
cluster membership, publish/subscribe, broadcast and request/reply; tunnels
are being built on the same trees.
"""

from ._node import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from ._node import Node as Node
from ._node import NodeStatistics as NodeStatistics
from ._node import join as join
from ._node import serve_node as serve_node
from .crypto.identity import NodeIdentity as NodeIdentity
from .crypto.keys import DEV_NETWORK as DEV_NETWORK
from .crypto.keys import Network as Network
from .crypto.keys import NetworkKey as NetworkKey
from .errors import ConfigError as ConfigError
from .errors import HandshakeError as HandshakeError
from .errors import IrisError as IrisError
from .errors import KeyFormatError as KeyFormatError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import NoRespondersError as NoRespondersError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteError as RemoteError
from .patterns.requests import IncomingRequests as IncomingRequests
from .patterns.requests import Request as Request
from .patterns.subscription import Subscription as Subscription
from .patterns.subscription import SubscriptionStatistics as SubscriptionStatistics

__version__ = "0.1.0.dev0"
from .patterns.tunnel import IncomingTunnels as IncomingTunnels
from .patterns.tunnel import Tunnel as Tunnel
from .patterns.tunnel import TunnelStatistics as TunnelStatistics

"""iris_trio: decentralized cloud messaging for Python, built on Trio.

Nodes join a peer-to-peer overlay with no broker and no configuration and
address *clusters by name*; the overlay does discovery, routing, load balancing
and encryption::

    async with iris_trio.join("echo") as node:
        async with node.subscribe("news") as events:
            await node.publish("news", b"hello")
            print(await events.receive())

The four patterns: request/reply (``node.request``; members ``node.serve`` or
``node.requests()``), broadcast (``node.broadcast``; ``node.broadcasts()``),
publish/subscribe (``node.publish``; ``node.subscribe()``) and tunnels
(``node.tunnel()``; ``node.tunnels()``). See docs/patterns.md.
"""

from ._node import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from ._node import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from ._node import MAX_TIMEOUT as MAX_TIMEOUT
from ._node import Node as Node
from ._node import NodeStatistics as NodeStatistics
from ._serve import join as join
from ._serve import serve_node as serve_node
from ._version import __version__ as __version__
from .crypto.identity import NodeIdentity as NodeIdentity
from .crypto.keys import DEV_NETWORK as DEV_NETWORK
from .crypto.keys import Network as Network
from .crypto.keys import NetworkKey as NetworkKey
from .errors import ConfigError as ConfigError
from .errors import HandshakeError as HandshakeError
from .errors import InternalError as InternalError
from .errors import IrisError as IrisError
from .errors import KeyFormatError as KeyFormatError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import NoRespondersError as NoRespondersError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteError as RemoteError
from .errors import RequestLostError as RequestLostError
from .errors import RequestTimeoutError as RequestTimeoutError
from .overlay.discovery import DiscoveryConfig as DiscoveryConfig
from .patterns.requests import IncomingRequests as IncomingRequests
from .patterns.requests import Request as Request
from .patterns.subscription import Subscription as Subscription
from .patterns.subscription import SubscriptionStatistics as SubscriptionStatistics
from .patterns.tunnel import IncomingTunnels as IncomingTunnels
from .patterns.tunnel import Tunnel as Tunnel
from .patterns.tunnel import TunnelStatistics as TunnelStatistics
from .relay import serve_relay as serve_relay
from .relay.client import connect as connect
from .relay.client import register as register

"""Patterns' building blocks: bounded subscriptions (publish/subscribe, broadcast)
and incoming requests (request/reply). Tunnels come next."""

from .requests import IncomingRequests as IncomingRequests
from .requests import Request as Request
from .subscription import Subscription as Subscription
from .subscription import SubscriptionStatistics as SubscriptionStatistics

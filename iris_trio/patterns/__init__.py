"""Patterns: publish/subscribe and broadcast (bounded subscriptions) so far;
request/reply and tunnels next."""

from .subscription import Subscription as Subscription
from .subscription import SubscriptionStatistics as SubscriptionStatistics

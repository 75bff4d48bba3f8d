"""Patterns: request/reply, broadcast, publish/subscribe and tunnels.

Not built yet: see the messaging patterns issue.
"""

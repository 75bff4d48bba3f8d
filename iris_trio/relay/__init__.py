"""Relay: the Iris relay protocol (server and anyio client).

Not built yet: see the relay issue and ``specs/relay-protocol.md``.
"""

"""The Iris relay protocol (v1.0-draft2): how Iris client libraries talk to a node.

So far: the sans-IO codec of every packet (:mod:`iris_trio.relay.codec`). The
server (``serve_relay``) and the anyio relay client build on it.
"""

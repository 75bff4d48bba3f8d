"""Overlay: Pastry routing, membership, liveness, discovery and Scribe-like trees.

Not built yet: see the overlay issue. Lower layers never import this package.
"""

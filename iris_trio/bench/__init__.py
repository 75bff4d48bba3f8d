"""Benchmark scenarios behind ``iris-trio bench``. Each prints human-readable
figures, and with ``--json`` a last line holding one JSON object."""

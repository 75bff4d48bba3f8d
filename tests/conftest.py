"""Shared fixtures."""

from __future__ import annotations

import pytest

from iris_trio.crypto import NodeIdentity


@pytest.fixture
def identities() -> tuple[NodeIdentity, NodeIdentity]:
    return NodeIdentity.generate(), NodeIdentity.generate()

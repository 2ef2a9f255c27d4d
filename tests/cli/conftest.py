"""Fixtures of the command-line client's tests."""

from __future__ import annotations

import pytest

from tests.live import _free_port


@pytest.fixture
def unused_port() -> int:
    """A local port nothing listens on (a server that cannot be reached)."""
    return _free_port()

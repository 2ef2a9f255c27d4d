"""Image services: import, convert, push, approve, share."""

from __future__ import annotations

from typing import Any


def image_copy_follow(operation: Any) -> None:
    """Bring the image copy of a push operation up to date with it."""

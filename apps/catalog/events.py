"""Live catalog events: one group per organisation, messages sent once the transaction that caused them commits.

Message: {"type": "catalog.event", "event": "image" | "image_copy" | "catalog_item", "id": <pk>, "image": <image pk
or None>, "state": <state>, "progress": <0-100>, "error": <text or "">}.
"""

from __future__ import annotations

from typing import Any

from apps.core.events import send_on_commit


def catalog_group(org_id: int) -> str:
    return f"catalog.{org_id}"


def catalog_message(*, event: str, id: int, image: int | None, state: str, progress: int = 0,
                    error: str = "") -> dict[str, Any]:
    return {
        "type": "catalog.event",
        "event": event,
        "id": id,
        "image": image,
        "state": state,
        "progress": max(0, min(100, int(progress or 0))),
        "error": error or "",
    }


def send_catalog_event(*, image: Any = None, copy: Any = None, item: Any = None) -> None:
    """Tell the organisation's pages about an image, an image copy or a catalog item (after the commit)."""
    if copy is not None:
        send_on_commit(
            catalog_group(copy.organization_id),
            catalog_message(event="image_copy", id=copy.pk, image=copy.image_id, state=copy.state,
                            progress=copy.progress, error=copy.error),
        )
    if image is not None:
        send_on_commit(
            catalog_group(image.organization_id),
            catalog_message(event="image", id=image.pk, image=image.pk, state=image.state, progress=image.progress,
                            error=image.error),
        )
    if item is not None:
        send_on_commit(
            catalog_group(item.organization_id),
            catalog_message(event="catalog_item", id=item.pk, image=item.image_id,
                            state="enabled" if item.is_enabled else "disabled", progress=100),
        )

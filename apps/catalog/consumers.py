"""/ws/catalog/: live states of images and their copies for the organisations whose images the user may see.

Messages to the client (JSON, always with "type"):
  hello          {}                                              once, after the handshake
  catalog.event  {"event", "id", "image", "state", "progress", "error"}   (apps.catalog.events)
  session.ended  {"reason"}    then close 4403                   sign in again
A user who may see no images is closed with 4403 at once. Roles that change move the socket to the organisations
it may now see; a token reaches only its own organisation.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from apps.catalog.events import catalog_group
from apps.core.access import get_access
from apps.core.ws import LiveConsumer

EVENT_FIELDS = ("event", "id", "image", "state", "progress", "error")


class CatalogConsumer(LiveConsumer):
    @database_sync_to_async
    def follow_groups(self) -> set[str]:
        access = get_access(self.user)
        orgs = access.orgs_allowing("images.view") | access.orgs_reached_through_projects("images.view")
        if self.token_organization_id is not None:
            orgs &= {self.token_organization_id}
        return {catalog_group(org) for org in orgs}

    # --- events (type "a.b" arrives at method a_b) ----------------------------------------------------------------
    async def catalog_event(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "catalog.event", **{k: event.get(k) for k in EVENT_FIELDS}})

    async def access_changed(self, event: dict[str, Any]) -> None:
        await self.refresh_access()
        groups = await self.follow_groups()
        for group in self.groups_joined - groups:
            await self.leave(group)
        await self.join(groups)

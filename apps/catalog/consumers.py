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
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.accounts.models import User
from apps.catalog.events import catalog_group
from apps.core.access import forget_access, get_access
from apps.core.events import user_group
from apps.core.ws_auth import CLOSE_FORBIDDEN, SUBPROTOCOL, narrow_to_token

EVENT_FIELDS = ("event", "id", "image", "state", "progress", "error")


class CatalogConsumer(AsyncJsonWebsocketConsumer):
    user: Any
    groups_joined: set[str]
    token_id: int | None
    token_organization_id: int | None

    async def connect(self) -> None:
        self.user = self.scope["user"]
        self.token_id = self.scope.get("auth_token_id")
        self.token_organization_id = self.scope.get("auth_token_organization_id")
        self.groups_joined = set()
        offered = self.scope.get("subprotocols") or []
        await self.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        # the user's own group first: a session that ends while the catalog groups are joined is not missed
        await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
        if not await self._still_valid():
            await self._end(reason="signed out")
            return
        groups = await self._groups()
        if not groups:
            await self._leave_all()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self._join(groups)
        await self.send_json({"type": "hello"})

    async def disconnect(self, code: int) -> None:
        await self._leave_all()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    # --- events (type "a.b" arrives at method a_b) ----------------------------------------------------------------
    async def catalog_event(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "catalog.event", **{k: event.get(k) for k in EVENT_FIELDS}})

    async def access_changed(self, event: dict[str, Any]) -> None:
        await self._refresh_access()
        groups = await self._groups()
        for group in self.groups_joined - groups - {user_group(self.user.pk)}:
            await self.channel_layer.group_discard(group, self.channel_name)
            self.groups_joined.discard(group)
        await self._join(groups)

    async def session_ended(self, event: dict[str, Any]) -> None:
        await self._end(reason=event.get("reason", "signed out"))

    async def token_revoked(self, event: dict[str, Any]) -> None:
        if self.token_id is not None and event.get("token_id") == self.token_id:
            await self._end(reason="token revoked")

    async def notification_new(self, event: dict[str, Any]) -> None:
        """Notifications have their own socket."""

    async def notification_read(self, event: dict[str, Any]) -> None:
        """Notifications have their own socket."""

    # --- helpers --------------------------------------------------------------------------------------------------
    async def _join(self, groups: set[str]) -> None:
        for group in groups - self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.add(group)

    async def _leave_all(self) -> None:
        for group in {*getattr(self, "groups_joined", set()), user_group(self.user.pk)}:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = set()

    async def _end(self, **extra: Any) -> None:
        await self.send_json({"type": "session.ended", **extra})
        await self._leave_all()
        await self.close(code=CLOSE_FORBIDDEN)

    @database_sync_to_async
    def _groups(self) -> set[str]:
        access = get_access(self.user)
        orgs = access.orgs_allowing("images.view") | access.orgs_reached_through_projects("images.view")
        if self.token_organization_id is not None:
            orgs &= {self.token_organization_id}
        return {catalog_group(org) for org in orgs}

    @database_sync_to_async
    def _refresh_access(self) -> None:
        if self.token_organization_id is not None:
            narrow_to_token(self.user, self.token_organization_id)
        else:
            forget_access(self.user)

    @database_sync_to_async
    def _still_valid(self) -> bool:
        from apps.accounts.models import ApiToken

        current = User._base_manager.filter(pk=self.user.pk, is_active=True).first()
        if current is None:
            return False
        if self.token_id is not None:
            return ApiToken._base_manager.filter(pk=self.token_id, revoked_at__isnull=True).exists()
        return current.get_session_auth_hash() == self.user.get_session_auth_hash()

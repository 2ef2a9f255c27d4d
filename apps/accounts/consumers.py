"""/ws/notifications/: a user's live notifications, unread count and the end of their session.

Messages to the client (JSON, always with "type"):
  hello             {"unread": n}                                  once, after the handshake
  notification.new  {"id", "text", "level", "link", "unread": n}
  notification.read {"unread": n}
  access.changed    {}                                             roles changed: reload what depends on them
  session.ended     {"reason"}    then close 4403                  sign in again
  token.revoked     {}            then close 4403                  only to the socket opened with that token
The client may send {"type": "ping"} and gets {"type": "pong"}.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.accounts.models import Notification, User
from apps.core.access import forget_access
from apps.core.events import user_group
from apps.core.ws_auth import CLOSE_FORBIDDEN, SUBPROTOCOL, narrow_to_token


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    user: Any
    group: str
    token_id: int | None
    token_organization_id: int | None

    async def connect(self) -> None:
        self.user = self.scope["user"]
        self.token_id = self.scope.get("auth_token_id")
        self.token_organization_id = self.scope.get("auth_token_organization_id")
        self.group = user_group(self.user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        offered = self.scope.get("subprotocols") or []
        await self.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        # an event sent between authentication and joining the group would be lost: check once more
        if not await self._still_valid():
            await self._end("session.ended", reason="signed out")
            return
        await self.send_json({"type": "hello", "unread": await self._unread()})

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    # --- events from apps.core.events (type "a.b" arrives at method a_b) -----------------------------------
    async def notification_new(self, event: dict[str, Any]) -> None:
        org_id = event.get("organization_id")
        if self.token_organization_id is not None and org_id != self.token_organization_id:
            return  # a token reaches only its own organisation
        await self.send_json(
            {
                "type": "notification.new",
                "id": event.get("id"),
                "text": event.get("text", ""),
                "level": event.get("level", "info"),
                "link": event.get("link", ""),
                "unread": await self._unread(),
            }
        )

    async def notification_read(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "notification.read", "unread": await self._unread()})

    async def access_changed(self, event: dict[str, Any]) -> None:
        await self._refresh_access()
        await self.send_json({"type": "access.changed"})

    async def session_ended(self, event: dict[str, Any]) -> None:
        await self._end("session.ended", reason=event.get("reason", "signed out"))

    async def token_revoked(self, event: dict[str, Any]) -> None:
        if self.token_id is not None and event.get("token_id") == self.token_id:
            await self._end("token.revoked")

    # --- helpers ------------------------------------------------------------------------------------------
    async def _end(self, kind: str, **extra: Any) -> None:
        await self.send_json({"type": kind, **extra})
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.close(code=CLOSE_FORBIDDEN)

    @database_sync_to_async
    def _unread(self) -> int:
        return Notification.objects.for_user(self.user).filter(read_at__isnull=True).count()

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

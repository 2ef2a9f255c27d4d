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

from apps.accounts.models import Notification
from apps.core.ws import LiveConsumer


class NotificationConsumer(LiveConsumer):
    async def hello(self) -> None:
        await self.send_json({"type": "hello", "unread": await self._unread()})

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
        await self.refresh_access()
        await self.send_json({"type": "access.changed"})

    async def token_revoked(self, event: dict[str, Any]) -> None:
        if self.token_id is not None and event.get("token_id") == self.token_id:
            await self.end("token.revoked")

    @database_sync_to_async
    def _unread(self) -> int:
        return Notification.objects.for_user(self.user).filter(read_at__isnull=True).count()

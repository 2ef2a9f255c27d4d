"""What every live socket shares (/ws/notifications/, /ws/catalog/, /ws/deployments/): who is connected (a session
or an API token narrowed to its organisation), the user's and the session's own groups joined first so that a
sign-out, a deactivation or a revoked token ends the socket at once, a second validity check after joining (an
event sent between authentication and joining would be lost), the keepalive, and leaving every group at the end.

A subclass says which groups it follows (`follow_groups`), what it says once connected (`hello`), and handles its
own event types; message types it has no handler for are ignored (the user group carries every socket's messages).
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.core.access import forget_access
from apps.core.events import session_group, user_group
from apps.core.ws_auth import CLOSE_FORBIDDEN, SUBPROTOCOL, narrow_to_token

log = logging.getLogger(__name__)


class LiveConsumer(AsyncJsonWebsocketConsumer):
    user: Any
    token_id: int | None
    token_organization_id: int | None
    groups_joined: set[str]
    session_group: str | None = None

    # --- what a subclass provides -----------------------------------------------------------------------------
    async def follow_groups(self) -> set[str] | None:
        """The groups to follow besides the user's and the session's own; an empty set closes the socket with 4403
        (nothing it may see); None means the socket follows only the user's group."""
        return None

    async def hello(self) -> None:
        await self.send_json({"type": "hello"})

    async def forget(self) -> None:
        """Drop per-socket state when the socket leaves every group."""

    # --- connection -------------------------------------------------------------------------------------------
    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.token_id = self.scope.get("auth_token_id")
        self.token_organization_id = self.scope.get("auth_token_organization_id")
        self.groups_joined = set()
        offered = self.scope.get("subprotocols") or []
        await self.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CLOSE_FORBIDDEN)  # the auth middleware refuses these first; never serve one
            return
        # the user's own group first: a session that ends while the other groups are joined is not missed
        await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
        self.session_group = self._session_group()
        if self.session_group:
            await self.channel_layer.group_add(self.session_group, self.channel_name)
        if not await self.still_valid():
            await self.end(reason="signed out")
            return
        groups = await self.follow_groups()
        if groups is not None and not groups:
            await self.leave_all()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.join(groups or set())
        await self.hello()

    async def disconnect(self, code: int) -> None:
        await self.leave_all()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """A message type this socket has no handler for belongs to another kind of socket on the same user
        group: ignored, never a reason to end the socket."""
        kind = str(message.get("type", ""))
        try:
            handled = kind.startswith("websocket.") or hasattr(self, get_handler_name(message))
        except ValueError:  # a type naming a private method
            handled = False
        if handled:
            await super().dispatch(message)
        else:
            log.debug("%s ignores %r messages", type(self).__name__, kind)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.ping()

    async def ping(self) -> None:
        """The keepalive: a signed-out session or an expired token has no event of its own, it shows here."""
        if not await self.still_valid():
            await self.end(reason="signed out")
            return
        await self.send_json({"type": "pong"})

    # --- events every socket understands (type "a.b" arrives at method a_b) --------------------------------------
    async def session_ended(self, event: dict[str, Any]) -> None:
        await self.end(reason=event.get("reason", "signed out"))

    async def token_revoked(self, event: dict[str, Any]) -> None:
        if self.token_id is not None and event.get("token_id") == self.token_id:
            await self.end(reason="token revoked")

    # --- groups -----------------------------------------------------------------------------------------------
    async def join(self, groups: set[str]) -> None:
        for group in groups - self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.add(group)

    async def leave(self, group: str) -> None:
        await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined.discard(group)

    async def leave_all(self) -> None:
        user = getattr(self, "user", None)
        groups = set(getattr(self, "groups_joined", set()))
        if user is not None and user.is_authenticated:
            groups.add(user_group(user.pk))
        if self.session_group:
            groups.add(self.session_group)
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = set()
        await self.forget()

    async def end(self, kind: str = "session.ended", **extra: Any) -> None:
        await self.send_json({"type": kind, **extra})
        await self.leave_all()
        await self.close(code=CLOSE_FORBIDDEN)

    def _session_group(self) -> str | None:
        """A browser's socket also joins its session's group: signing out there closes it at once."""
        session = self.scope.get("session")
        key = getattr(session, "session_key", None) if self.token_id is None else None
        return session_group(key) if key else None

    # --- access ----------------------------------------------------------------------------------------------
    @database_sync_to_async
    def refresh_access(self) -> None:
        self.refresh_access_now()

    def refresh_access_now(self) -> None:
        if self.token_organization_id is not None:
            narrow_to_token(self.user, self.token_organization_id)
        else:
            forget_access(self.user)

    @database_sync_to_async
    def still_valid(self) -> bool:
        """The user is active and the token is live, or the session still exists with the same auth hash (signing
        out deletes it, a password change or a removed role changes the hash)."""
        from apps.accounts.models import ApiToken, User

        current = User._base_manager.filter(pk=self.user.pk, is_active=True).first()
        if current is None:
            return False
        if self.token_id is not None:
            live = ApiToken._base_manager.filter(pk=self.token_id, revoked_at__isnull=True)
            return live.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())).exists()
        session_key = getattr(self.scope.get("session"), "session_key", None)
        if not session_key or not import_module(settings.SESSION_ENGINE).SessionStore().exists(session_key):
            return False
        return current.get_session_auth_hash() == self.user.get_session_auth_hash()

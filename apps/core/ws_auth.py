"""Who is on the other end of a websocket: a browser signed in with its Django session, or a client
holding an API token (the CLI).

- Session: the cookie goes through Channels' session machinery and Django's session auth hash check, so a
  bumped `session_epoch`, a changed password or a deactivated user refuses the socket exactly like a page.
  A cookie authenticates only a handshake that carries an Origin header (browsers always send one; the
  origin validator has already checked it against ALLOWED_HOSTS).
- Token: `Authorization: Token sky_...` (CLI), or for browsers, which cannot set headers, the subprotocol
  `skyport.token.<secret>` offered together with `skyport.v1` (the server answers with `skyport.v1`, so the
  secret is never echoed back). A token in the query string is refused: URLs end up in access logs.

Anonymous or refused handshakes are accepted and closed at once with code 4401, so a client can tell "sign in
again" from a network failure and stop reconnecting.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings

from apps.core.access import Access, forget_access, get_access

log = logging.getLogger(__name__)

SUBPROTOCOL = "skyport.v1"
TOKEN_SUBPROTOCOL_PREFIX = "skyport.token."
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403

Scope = dict[str, Any]


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


class NoOriginAllowedOriginValidator(OriginValidator):
    """Channels refuses a handshake without Origin unless ALLOWED_HOSTS contains "*". Browsers always send
    Origin on a websocket handshake, so a missing one means a non-browser client: it is let through to
    authentication, which then accepts only a token. A present Origin must still match ALLOWED_HOSTS."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope.get("type") == "websocket" and header(scope, b"origin") is None:
            return await self.application(scope, receive, send)
        return await super().__call__(scope, receive, send)


def AllowedHostsOriginValidator(application: Any) -> NoOriginAllowedOriginValidator:
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return NoOriginAllowedOriginValidator(application, allowed_hosts)


def narrow_to_token(user: Any, organization_id: int) -> Access:
    """A token reaches only the organisation it was issued for (as in the API's TokenAuthentication)."""
    forget_access(user)
    full = get_access(user)
    access = Access(
        user_id=full.user_id,
        org_roles={k: v for k, v in full.org_roles.items() if k == organization_id},
        project_roles={k: v for k, v in full.project_roles.items() if v[0] == organization_id},
    )
    user._skyport_access = access
    return access


def _token_from(scope: Scope) -> tuple[str | None, bool]:
    """(secret, presented): `presented` is true when the client tried token auth, even malformed."""
    value = header(scope, b"authorization")
    if value is not None:
        parts = value.split()
        if parts and parts[0].lower() in (b"token", b"bearer"):
            if len(parts) != 2:
                return None, True
            try:
                return parts[1].decode("ascii"), True
            except UnicodeDecodeError:
                return None, True
    for proto in scope.get("subprotocols") or []:
        if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return proto[len(TOKEN_SUBPROTOCOL_PREFIX) :], True
    return None, False


def _without_secrets(scope: Scope) -> None:
    """Nothing downstream (consumers, error logs) gets to see a token secret."""
    scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"authorization"]
    offered = scope.get("subprotocols") or []
    scope["subprotocols"] = [p for p in offered if not p.startswith(TOKEN_SUBPROTOCOL_PREFIX)]


@database_sync_to_async
def _token_user(secret: str, ip: str | None) -> tuple[Any, Any] | None:
    from apps.accounts.authentication import token_user

    found = token_user(secret, ip)
    if found is None:
        return None
    user, token = found
    narrow_to_token(user, token.organization_id)
    return user, token


async def refuse(receive: Any, send: Any, code: int) -> None:
    """Accept, then close with an application code: a refusal before accept reaches a browser only as 1006."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code})


class _Authenticate:
    def __init__(self, inner: Any):
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        scope = dict(scope)
        client = scope.get("client") or (None, None)
        secret, presented = _token_from(scope)
        _without_secrets(scope)
        scope["auth_token_id"] = None
        scope["auth_token_organization_id"] = None
        user = None
        if "token" in parse_qs(scope.get("query_string", b"").decode("latin1"), keep_blank_values=True):
            log.info("websocket refused: token in the query string (use the Authorization header)")
        elif presented:
            found = await _token_user(secret, client[0]) if secret else None
            if found is not None:
                user, token = found
                scope["auth_token_id"] = token.pk
                scope["auth_token_organization_id"] = token.organization_id
            else:
                log.info("websocket refused: invalid, expired or revoked token")
        elif header(scope, b"origin") is not None:
            session_user = await get_user(scope)
            if session_user.is_authenticated:
                user = session_user
        if user is None:
            return await refuse(receive, send, CLOSE_UNAUTHENTICATED)
        scope["user"] = user
        return await self.inner(scope, receive, send)


class SessionOrTokenAuthMiddleware:
    """Puts the authenticated user in scope["user"] (and, for tokens, scope["auth_token_id"] and
    scope["auth_token_organization_id"]) or closes the socket with 4401."""

    def __init__(self, inner: Any):
        self.app = CookieMiddleware(SessionMiddleware(_Authenticate(inner)))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        return await self.app(scope, receive, send)

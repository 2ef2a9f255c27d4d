"""`Authorization: Token sky_...` for the API and the CLI."""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions

from apps.accounts.models import ApiToken
from apps.core.middleware import client_ip

LAST_USED_RESOLUTION = datetime.timedelta(minutes=1)


def token_user(secret: str, ip: str | None = None) -> tuple[Any, ApiToken] | None:
    """The (user, token) for a live token secret, or None. Writes last-used at most once a minute."""
    if not secret.startswith(ApiToken.PREFIX) or len(secret) > 100:
        return None
    now = timezone.now()
    token = (
        ApiToken.objects.all_tenants()
        .select_related("user", "organization")
        .filter(key_hash=ApiToken.hash_secret(secret), revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )
    if token is None or not token.user.is_active or not token.organization.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken._base_manager.filter(pk=token.pk).update(last_used_at=now, last_used_ip=ip)
    return token.user, token


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() not in (b"token", b"bearer"):
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Token sky_...'.")
        try:
            secret = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Malformed token.") from None
        found = token_user(secret, client_ip(request._request))
        if found is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        user, token = found
        from apps.core.access import get_access

        # a token reaches only the organisation it was issued for
        full = get_access(user)
        from apps.core.access import Access

        user._skyport_access = Access(
            user_id=full.user_id,
            org_roles={k: v for k, v in full.org_roles.items() if k == token.organization_id},
            project_roles={k: v for k, v in full.project_roles.items() if v[0] == token.organization_id},
        )
        return user, token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword

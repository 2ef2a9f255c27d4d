from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from apps.accounts.models import User


class UsernameOrEmailBackend(ModelBackend):
    def authenticate(  # type: ignore[override]
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        if not username or password is None:
            return None
        try:
            user = User.objects.get_by_login(username)
        except User.DoesNotExist:
            User().set_password(password)  # same work as a real check: no timing oracle for unknown logins
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None

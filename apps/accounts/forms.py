"""Forms of the account pages. They validate input; the services decide and write."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth.password_validation import password_validators_help_text_html, validate_password
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator

from apps.accounts.models import ApiToken, User
from apps.core.roles import ORG_ROLES, PROJECT_ROLES, Role

DATETIME_LOCAL = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


def role_choices(roles: frozenset[Role] | None = None, blank: bool = False) -> list[tuple[str, str]]:
    choices = [(r.value, r.label) for r in Role if roles is None or r in roles]
    # a blank first choice where nothing is preselected, so nobody grants admin without choosing it
    return [("", "Choose a role…"), *choices] if blank else choices


class LoginForm(forms.Form):
    login = forms.CharField(
        label="Username or email",
        max_length=254,
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    password = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


class PasswordChangeForm(forms.Form):
    old_password = forms.CharField(
        label="Current password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    new_password1 = forms.CharField(
        label="New password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validators_help_text_html(),
    )
    new_password2 = forms.CharField(
        label="New password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("new_password1") and data.get("new_password1") != data.get("new_password2"):
            self.add_error("new_password2", "The two new passwords differ.")
        return data


class InvitationSignUpForm(forms.Form):
    username = forms.RegexField(
        label="Username",
        max_length=150,
        regex=r"^[\w.@+-]+\Z",
        error_messages={"invalid": "Letters, digits and @ . + - _ only."},
        widget=forms.TextInput(attrs={"autocomplete": "username"}),
    )
    full_name = forms.CharField(
        label="Full name",
        max_length=200,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args: Any, email: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.email = email

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        password = data.get("password1")
        if password and password != data.get("password2"):
            self.add_error("password2", "The two passwords differ.")
        elif password and data.get("username"):
            first, _, last = data.get("full_name", "").strip().partition(" ")
            candidate = User(username=data["username"], email=self.email, first_name=first, last_name=last)
            try:
                validate_password(password, candidate)
            except ValidationError as e:
                self.add_error("password1", e)
        return data


def _member_label(user: User) -> str:
    return f"{user.display_name} ({user.username})"


class MembershipAddForm(forms.Form):
    user = forms.ModelChoiceField(queryset=User.objects.none(), label="Member")
    project: forms.ModelChoiceField = forms.ModelChoiceField(
        queryset=None, required=False, label="Project", empty_label="— whole organisation —"
    )
    role = forms.ChoiceField(
        choices=role_choices(blank=True),
        label="Role",
        help_text="Admin, manager and security hold for the whole organisation; designer, "
        "member and viewer for one project.",
    )
    expires_at = forms.DateTimeField(
        required=False, label="Expires (UTC)", widget=DATETIME_LOCAL, help_text="Optional."
    )

    def __init__(self, *args: Any, users: Any, projects: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        user_field = cast(forms.ModelChoiceField, self.fields["user"])
        user_field.queryset = users
        user_field.empty_label = "Choose a member…"
        user_field.label_from_instance = _member_label  # type: ignore[method-assign,assignment]
        cast(forms.ModelChoiceField, self.fields["project"]).queryset = projects


class MembershipEditForm(forms.Form):
    role = forms.ChoiceField(label="Role")
    expires_at = forms.DateTimeField(
        required=False, label="Expires (UTC)", widget=DATETIME_LOCAL, help_text="Leave empty for no expiry."
    )

    def __init__(self, *args: Any, project_role: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        roles = PROJECT_ROLES if project_role else ORG_ROLES
        cast(forms.ChoiceField, self.fields["role"]).choices = role_choices(roles)


class InvitationForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254)
    project: forms.ModelChoiceField = forms.ModelChoiceField(
        queryset=None, required=False, label="Project", empty_label="— whole organisation —"
    )
    role = forms.ChoiceField(choices=role_choices(blank=True), label="Role")
    membership_expires_at = forms.DateTimeField(
        required=False, label="Membership expires (UTC)", widget=DATETIME_LOCAL, help_text="Optional."
    )

    def __init__(self, *args: Any, projects: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["project"]).queryset = projects


class TokenCreateForm(forms.Form):
    name = forms.CharField(
        label="Name", max_length=100, help_text="What the token is for, e.g. “CI pipeline”."
    )
    scope = forms.ChoiceField(choices=ApiToken.Scope.choices, initial=ApiToken.Scope.READ, label="Scope")
    expires_in_days = forms.IntegerField(label="Expires in (days)", initial=90, min_value=1)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        field = cast(forms.IntegerField, self.fields["expires_in_days"])
        field.max_value = settings.SKYPORT_TOKEN_MAX_DAYS
        field.validators.append(MaxValueValidator(settings.SKYPORT_TOKEN_MAX_DAYS))
        field.widget.attrs.update({"min": 1, "max": settings.SKYPORT_TOKEN_MAX_DAYS})
        field.help_text = f"1 to {settings.SKYPORT_TOKEN_MAX_DAYS} days."

from __future__ import annotations

import hashlib
import secrets
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac

from apps.core.access import Access
from apps.core.roles import ORG_ROLES, PROJECT_ROLES, Role
from apps.core.tenancy import ScopedModel, TenantModel


class SkyportUserManager(UserManager):
    def get_by_login(self, login: str) -> User:
        login = (login or "").strip()
        field = "email__iexact" if "@" in login else "username__iexact"
        return self.get(**{field: login})  # type: ignore[return-value]


class User(AbstractUser):
    """A person. Sign in with username or email."""

    email = models.EmailField("email address", unique=True)
    # bumped to end every session and websocket of the user at once (deactivation, password change, removal)
    session_epoch = models.PositiveIntegerField(default=0)

    objects = SkyportUserManager()  # type: ignore[misc]

    class Meta:
        constraints = [models.UniqueConstraint(Lower("username"), name="user_username_ci_unique")]

    def __str__(self) -> str:
        return self.username

    @property
    def display_name(self) -> str:
        return self.get_full_name() or self.username

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        # Django checks this hash on every request: bumping session_epoch ends every session of the user.
        return salted_hmac(
            "apps.accounts.User.session_epoch",
            f"{self.password}|{self.session_epoch}",
            secret=secret,
            algorithm="sha256",
        ).hexdigest()


class Organization(ScopedModel):
    VIEW_ACTION: ClassVar[str] = "org.view"

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        return Q(pk__in=access.orgs_allowing(action) | access.orgs_reached_through_projects(action))

    @property
    def organization_id(self) -> int:
        return self.pk


class Project(TenantModel):
    VIEW_ACTION: ClassVar[str] = "projects.view"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="projects")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50)
    description = models.CharField(max_length=500, blank=True)
    is_archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "name"]
        constraints = [models.UniqueConstraint("organization", "slug", name="project_slug_unique_in_org")]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        return Q(organization_id__in=access.orgs_allowing(action)) | Q(pk__in=access.projects_allowing(action))

    @property
    def project_id(self) -> int:
        return self.pk

    def check_tenant_consistency(self) -> None:
        if self.organization_id is None:
            from apps.core.tenancy import CrossTenantError

            raise CrossTenantError({"organization": "An organisation is required."}, code="required")
        loaded = getattr(self, "_loaded_organization_id", None)
        if loaded is not None and loaded != self.organization_id:
            from apps.core.tenancy import CrossTenantError

            raise CrossTenantError({"organization": "A project cannot move to another organisation."})


class Membership(TenantModel):
    """A role for a user in an organisation (org role, project empty) or in one project of it."""

    VIEW_ACTION: ClassVar[str] = "members.view"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    expires_at = models.DateTimeField(null=True, blank=True)
    # set once the periodic job has ended the sessions of a member whose role expired
    expiry_handled = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization_id", "project_id", "user__username"]
        constraints = [
            models.UniqueConstraint(
                "user", "organization", "role", condition=Q(project__isnull=True), name="membership_org_role_unique"
            ),
            models.UniqueConstraint(
                "user", "project", condition=Q(project__isnull=False), name="membership_project_unique"
            ),
            models.CheckConstraint(
                condition=(Q(project__isnull=True) & Q(role__in=sorted(r.value for r in ORG_ROLES)))
                | (Q(project__isnull=False) & Q(role__in=sorted(r.value for r in PROJECT_ROLES))),
                name="membership_role_matches_scope",
            ),
        ]

    def __str__(self) -> str:
        where = self.project.name if self.project is not None else self.organization.name
        return f"{self.user} — {self.role} in {where}"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Invitation(TenantModel):
    VIEW_ACTION: ClassVar[str] = "members.manage"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    membership_expires_at = models.DateTimeField(null=True, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation for {self.email}"

    @staticmethod
    def new_secret() -> tuple[str, str]:
        secret = secrets.token_urlsafe(32)
        return secret, _token_hash(secret)

    @staticmethod
    def hash_secret(secret: str) -> str:
        return _token_hash(secret)

    @property
    def status(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


class ApiToken(TenantModel):
    """A personal API token bound to one organisation. Only a SHA-256 of the secret is stored."""

    VIEW_ACTION: ClassVar[str] = "tokens.review"
    PREFIX: ClassVar[str] = "sky_"

    class Scope(models.TextChoices):
        READ = "read", "Read only"
        WRITE = "write", "Read and write"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_prefix = models.CharField(max_length=12, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.READ)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        # everyone sees their own tokens; security and admins review the organisation's
        return Q(user_id=access.user_id, organization_id__in=access.organization_ids) | Q(
            organization_id__in=access.orgs_allowing("tokens.review")
        )

    @classmethod
    def new_secret(cls) -> tuple[str, str, str]:
        secret = cls.PREFIX + secrets.token_urlsafe(32)
        return secret, secret[:10], _token_hash(secret)

    @staticmethod
    def hash_secret(secret: str) -> str:
        return _token_hash(secret)

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class Notification(TenantModel):
    class Level(models.TextChoices):
        INFO = "info", "Info"
        SUCCESS = "success", "Success"
        WARNING = "warning", "Warning"
        DANGER = "danger", "Problem"

    recipient = models.ForeignKey(User, on_delete=models.CASCADE, related_name="notifications")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    text = models.CharField(max_length=500)
    link = models.CharField(max_length=300, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["recipient", "read_at"])]

    def __str__(self) -> str:
        return self.text

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        return Q(recipient_id=access.user_id, organization_id__in=access.organization_ids)


class SshKey(models.Model):
    """A public key a user keeps in their profile, offered at launch. Only the user sees and uses their keys."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100)
    public_key = models.TextField()
    fingerprint = models.CharField(max_length=100)  # SHA256:... as ssh-keygen -l prints it
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint("user", "name", name="ssh_key_name_per_user"),
            models.UniqueConstraint("user", "fingerprint", name="ssh_key_once_per_user"),
        ]

    def __str__(self) -> str:
        return self.name


def model_label(obj: Any) -> str:
    return f"{obj._meta.app_label}.{obj._meta.model_name}"

from __future__ import annotations

import json
from typing import Any, ClassVar

from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.core import crypto
from apps.core.access import Access
from apps.core.tenancy import TenantModel


def granted_account_ids(project_ids: set[int]) -> Any:
    """Subquery: accounts with a live grant to one of these projects (a subquery, so no duplicate rows)."""
    live = CloudGrant.objects.all_tenants().filter(project_id__in=project_ids, revoked_at__isnull=True)
    return live.values("account_id")


class Health(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    OK = "ok", "OK"
    DEGRADED = "degraded", "Degraded"
    FAILING = "failing", "Failing"


class CloudAccount(TenantModel):
    """An organisation's account with one provider. Credentials are write-only: encrypted at rest, never shown
    (only a fingerprint and the last four characters)."""

    VIEW_ACTION: ClassVar[str] = "clouds.view"

    class Kind(models.TextChoices):
        SIM = "sim", "Simulated cloud"
        EC2 = "ec2", "Amazon EC2"
        OPENSTACK = "openstack", "OpenStack"
        LIBCLOUD = "libcloud", "Other (Apache Libcloud)"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="cloud_accounts")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    endpoint = models.CharField(max_length=300, blank=True)
    regions = models.JSONField(default=list, blank=True)  # region ids this account is used in
    default_region = models.CharField(max_length=64, blank=True)
    # provider-specific, non-secret settings (libcloud provider name, OpenStack project/domain, image filters, ...)
    options = models.JSONField(default=dict, blank=True)
    credentials_encrypted = models.TextField(editable=False)
    credentials_fingerprint = models.CharField(max_length=16, editable=False)
    credentials_hint = models.CharField(max_length=8, editable=False)  # last four characters of the secret
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    health_message = models.CharField(max_length=500, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey("accounts.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint("organization", "slug", name="cloud_account_slug_unique_in_org")]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        # org roles with the action see the account; project roles see it through a live grant to their project
        base = Q(organization_id__in=access.orgs_allowing(action))
        projects = access.projects_allowing(action)
        if projects:
            base |= Q(pk__in=granted_account_ids(projects))
        return base

    def set_credentials(self, credentials: dict[str, str], *, secret_field: str) -> None:
        plaintext = json.dumps(credentials, sort_keys=True)
        self.credentials_encrypted = crypto.encrypt(plaintext)
        self.credentials_fingerprint = crypto.fingerprint(plaintext)
        secret = credentials.get(secret_field, "")
        self.credentials_hint = secret[-4:] if len(secret) >= 8 else ""

    def get_credentials(self) -> dict[str, str]:
        return json.loads(crypto.decrypt(self.credentials_encrypted))

    @property
    def all_regions(self) -> list[str]:
        return list(self.regions) or ([self.default_region] if self.default_region else [])


class CloudGrant(TenantModel):
    """An organisation's account delegated to a project (optionally only some regions), credentials unseen."""

    VIEW_ACTION: ClassVar[str] = "clouds.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.CASCADE, related_name="cloud_grants")
    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="grants")
    regions = models.JSONField(default=list, blank=True)  # empty: every region of the account
    granted_by = models.ForeignKey("accounts.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["account__name", "project__name"]
        constraints = [
            models.UniqueConstraint(
                "account", "project", condition=Q(revoked_at__isnull=True), name="one_live_grant_per_account_project"
            )
        ]

    def __str__(self) -> str:
        return f"{self.account} → {self.project}"

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None

    def covers(self, region: str) -> bool:
        return not self.regions or region in self.regions


class SyncedModel(TenantModel):
    """A row mirrored from a provider, per account and region. Kept (inactive) when the provider drops it."""

    VIEW_ACTION: ClassVar[str] = "clouds.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="+")
    region = models.CharField(max_length=64)
    provider_id = models.CharField(max_length=255)
    name = models.CharField(max_length=255)
    is_active = models.BooleanField(default=True)
    synced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        base = Q(organization_id__in=access.orgs_allowing(action))
        projects = access.projects_allowing(action)
        if projects:
            base |= Q(account_id__in=granted_account_ids(projects))
        return base


class Flavor(SyncedModel):
    vcpus = models.PositiveIntegerField()
    ram_mb = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField(default=0)
    arch = models.CharField(max_length=16, default="x86_64")
    gpus = models.PositiveIntegerField(default=0)
    provider_price_per_hour = models.DecimalField(max_digits=10, decimal_places=5, null=True, blank=True)
    price_override_per_hour = models.DecimalField(max_digits=10, decimal_places=5, null=True, blank=True)

    class Meta:
        ordering = ["vcpus", "ram_mb", "name"]
        constraints = [
            models.UniqueConstraint("account", "region", "provider_id", name="flavor_unique_per_account_region")
        ]

    @property
    def price_per_hour(self) -> Any:
        override = self.price_override_per_hour
        return override if override is not None else self.provider_price_per_hour


class CloudImage(SyncedModel):
    os = models.CharField(max_length=100, blank=True)
    arch = models.CharField(max_length=16, default="x86_64")
    owner = models.CharField(max_length=100, blank=True)
    is_public = models.BooleanField(default=False)
    status = models.CharField(max_length=32, default="available")
    min_disk_gb = models.PositiveIntegerField(default=0)
    disk_format = models.CharField(max_length=16, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint("account", "region", "provider_id", name="cloud_image_unique_per_account_region")
        ]


class Network(SyncedModel):
    cidr = models.CharField(max_length=64, blank=True)
    is_external = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint("account", "region", "provider_id", name="network_unique_per_account_region")
        ]


class Operation(TenantModel):
    """One mutating provider call (or a resumable sequence of them), committed before the call is made.

    Protocol (apps/clouds/operations.py): commit the intent; take the lease with a conditional update; call the
    provider with no transaction open, tagging what it creates with the installation and operation ids; commit each
    step's result. A worker that dies mid-way leaves a lease that expires; the next one resumes at `step`.
    """

    VIEW_ACTION: ClassVar[str] = "clouds.view"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    account = models.ForeignKey(CloudAccount, on_delete=models.PROTECT, related_name="operations")
    region = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=32)  # create_server, delete_server, resize_server, attach_public_ip, ...
    idempotency_key = models.CharField(max_length=100)  # unique per organisation (one cannot reach another's)
    params = models.JSONField(default=dict)  # never secrets
    steps = models.JSONField(default=list)  # the plan, e.g. ["stop", "resize", "start"]
    step = models.PositiveSmallIntegerField(default=0)  # index of the next step to run
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=5)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)  # provider ids etc., committed step by step
    error = models.CharField(max_length=1000, blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            # the next key of an instance's operations counts `d<dep>-i<inst>-%`: a prefix match, which a default
            # B-tree cannot serve under a non-C collation (PostgreSQL; the opclasses are ignored elsewhere)
            models.Index(fields=["organization", "idempotency_key"], opclasses=["int8_ops", "varchar_pattern_ops"],
                         name="operation_key_prefix"),
        ]
        constraints = [
            models.UniqueConstraint("organization", "idempotency_key", name="operation_idempotency_key_unique_in_org")
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.state})"

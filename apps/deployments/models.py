"""Deployments and their instances, with every instance transition recorded.

A transition row carries a snapshot of what the instance was at that moment (account, region, flavor, size,
price per hour, project, owner): usage and cost reports are computed from these rows later, and could not be
reconstructed from the instance as it is today (it may have been resized, transferred or deleted since).
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models import F, Q

from apps.core.tenancy import TenantModel
from apps.deployments.states import DeploymentState, InstanceState


class Deployment(TenantModel):
    """One launch: servers from a catalog item (or a blueprint version), with parameters, an owner and a lease."""

    VIEW_ACTION: ClassVar[str] = "deployments.view"

    class Policy(models.TextChoices):
        ACCOUNT = "account", "A chosen cloud"
        CHEAPEST = "cheapest", "Cheapest that fits"
        ORDERED = "ordered", "First that works, in order"
        SPREAD = "spread", "Spread for high availability"

    class LeaseAction(models.TextChoices):
        NONE = "", "Nothing"
        STOP = "stop", "Stop"
        DELETE = "delete", "Delete"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="deployments")
    owner = models.ForeignKey("accounts.User", on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=63)
    catalog_item = models.ForeignKey(
        "catalog.CatalogItem", null=True, blank=True, on_delete=models.PROTECT, related_name="deployments"
    )
    # pinned: a new blueprint version never changes a deployment made from an old one. Neither is set for servers
    # adopted from a cloud account (they were not launched through Skyport)
    blueprint_version = models.ForeignKey(
        "catalog.BlueprintVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="deployments"
    )
    parameters = models.JSONField(default=dict, blank=True)
    policy = models.CharField(max_length=10, choices=Policy.choices, default=Policy.CHEAPEST)
    # the chosen account-regions with their reasons, and every rejected cloud with why
    placement = models.JSONField(default=dict, blank=True)
    state = models.CharField(
        max_length=20, choices=DeploymentState.choices, default=DeploymentState.REQUESTED, db_index=True
    )
    state_message = models.CharField(max_length=1000, blank=True)  # a veto's or rejection's words, a failure
    estimated_hourly = models.DecimalField(max_digits=12, decimal_places=5, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    lease_action = models.CharField(max_length=6, choices=LeaseAction.choices, blank=True)
    # the client's Idempotency-Key: a retried request answers with the first deployment
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)
    # live events carry it; a client that sees a gap fetches the state again
    sequence = models.PositiveBigIntegerField(default=0)
    # the public key injected into the servers (a copy: deleting it from the profile changes no deployment)
    ssh_key_name = models.CharField(max_length=100, blank=True)
    ssh_public_key = models.TextField(blank=True)
    lease_reminded_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        # lists are newest first: the first page is read off this index instead of sorting every visible row
        indexes = [models.Index(F("created_at").desc(), F("id").desc(), name="deployment_newest")]
        constraints = [
            models.UniqueConstraint(
                "organization", "created_by", "idempotency_key", condition=Q(idempotency_key__isnull=False),
                name="deployment_idempotency_key_per_user",
            ),
        ]
        permissions = [("operate_deployment", "Start, stop, reboot, resize and delete this deployment")]

    def __str__(self) -> str:
        return self.name


class Instance(TenantModel):
    """One server of a deployment, in one account-region, with what it was launched as."""

    VIEW_ACTION: ClassVar[str] = "deployments.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="instances")
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="instances")
    owner = models.ForeignKey("accounts.User", on_delete=models.PROTECT, related_name="instances")
    name = models.CharField(max_length=63)  # predictable: <deployment>-<server>-<n>
    role = models.CharField(max_length=40)  # the blueprint server it is one of ("web", "db")
    index = models.PositiveSmallIntegerField(default=1)
    account = models.ForeignKey("clouds.CloudAccount", on_delete=models.PROTECT, related_name="instances")
    region = models.CharField(max_length=64)
    image = models.ForeignKey("catalog.Image", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    provider_image_id = models.CharField(max_length=255, blank=True)
    size = models.CharField(max_length=60)  # the hardware profile's short name
    flavor_id = models.CharField(max_length=255)  # the provider's flavor id
    vcpus = models.PositiveIntegerField()
    ram_mb = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField(default=0)
    price_per_hour = models.DecimalField(max_digits=10, decimal_places=5, null=True, blank=True)
    provider_server_id = models.CharField(max_length=255, blank=True, db_index=True)
    state = models.CharField(max_length=10, choices=InstanceState.choices, default=InstanceState.PENDING,
                             db_index=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=1000, blank=True)
    private_ips = models.JSONField(default=list, blank=True)
    public_ips = models.JSONField(default=list, blank=True)
    # when Skyport last recorded a transition: a provider list started before it must not overwrite it
    last_transition_at = models.DateTimeField(null=True, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    user_data = models.TextField(blank=True)  # the template; outputs of earlier servers are filled in at create
    ports = models.JSONField(default=list, blank=True)
    public_ip_id = models.CharField(max_length=255, blank=True)  # an address Skyport allocated (released on delete)
    # the current (or last) provider operation of the instance
    operation = models.ForeignKey("clouds.Operation", null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    # the `ordered` policy's next places to try when the provider refuses: [{account, region, flavor_id, ...}]
    fallbacks = models.JSONField(default=list, blank=True)
    missed_syncs = models.PositiveSmallIntegerField(default=0)  # a server gone from one list is not yet deleted
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["deployment_id", "role", "index"]
        constraints = [
            models.UniqueConstraint("deployment", "role", "index", name="instance_role_index_in_deployment"),
        ]

    def __str__(self) -> str:
        return self.name


class InstanceTransition(TenantModel):
    """One state change of an instance, with what it was at that moment. Append-only."""

    VIEW_ACTION: ClassVar[str] = "deployments.view"

    class Cause(models.TextChoices):
        LAUNCH = "launch", "Launch"
        USER = "user", "Asked by a user"
        PROVIDER = "provider", "Observed at the provider"
        OPERATION = "operation", "Provider operation"
        LEASE = "lease", "Lease expired"
        TIMEOUT = "timeout", "Stuck too long"
        DRIFT = "drift", "Changed outside Skyport"
        TRANSFER = "transfer", "Handed to another owner"  # from = to: a new snapshot, usage charged to the new owner
        CANCEL = "cancel", "Cancelled"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="+")
    instance = models.ForeignKey(Instance, on_delete=models.PROTECT, related_name="transitions")
    from_state = models.CharField(max_length=10, choices=InstanceState.choices)
    to_state = models.CharField(max_length=10, choices=InstanceState.choices)
    cause = models.CharField(max_length=10, choices=Cause.choices)
    message = models.CharField(max_length=500, blank=True)
    observed_at = models.DateTimeField()  # when it happened at the provider (as far as it tells)
    detected_at = models.DateTimeField()  # when Skyport learned it
    # the snapshot usage reports are computed from
    owner = models.ForeignKey("accounts.User", on_delete=models.PROTECT, related_name="+")
    account = models.ForeignKey("clouds.CloudAccount", on_delete=models.PROTECT, related_name="+")
    region = models.CharField(max_length=64)
    flavor_id = models.CharField(max_length=255)
    size = models.CharField(max_length=60)
    vcpus = models.PositiveIntegerField()
    ram_mb = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField(default=0)
    price_per_hour = models.DecimalField(max_digits=10, decimal_places=5, null=True, blank=True)

    class Meta:
        ordering = ["instance_id", "detected_at", "pk"]
        indexes = [models.Index(fields=["organization", "observed_at"], name="transition_org_observed")]

    def __str__(self) -> str:
        return f"{self.instance_id}: {self.from_state} → {self.to_state}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise ValueError("Instance transitions are append-only.")
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class Quota(TenantModel):
    """Limits for the whole organisation (no project, no user), one project, or one user in the organisation.
    An empty limit means no limit. Every applicable quota must hold for a launch."""

    VIEW_ACTION: ClassVar[str] = "deployments.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="quotas")
    user = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    max_instances = models.PositiveIntegerField(null=True, blank=True)
    max_vcpus = models.PositiveIntegerField(null=True, blank=True)
    max_ram_mb = models.PositiveIntegerField(null=True, blank=True)
    max_disk_gb = models.PositiveIntegerField(null=True, blank=True)
    updated_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.CheckConstraint(condition=Q(project__isnull=True) | Q(user__isnull=True),
                                   name="quota_one_scope"),
            models.UniqueConstraint("organization", condition=Q(project__isnull=True, user__isnull=True),
                                    name="one_org_quota"),
            models.UniqueConstraint("project", condition=Q(project__isnull=False), name="one_project_quota"),
            models.UniqueConstraint("organization", "user", condition=Q(user__isnull=False),
                                    name="one_user_quota_per_org"),
        ]

    def __str__(self) -> str:
        return f"quota {self.scope_label}"

    @property
    def scope_label(self) -> str:
        if self.project is not None:
            return f"of project {self.project.name}"
        if self.user is not None:
            return f"of {self.user.username}"
        return "of the organisation"


class QuotaReservation(TenantModel):
    """What one deployment holds against the quotas, from the request until it is deleted (or fails)."""

    VIEW_ACTION: ClassVar[str] = "deployments.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="+")
    user = models.ForeignKey("accounts.User", on_delete=models.PROTECT, related_name="+")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="reservations")
    instances = models.PositiveIntegerField(default=0)
    vcpus = models.PositiveIntegerField(default=0)
    ram_mb = models.PositiveIntegerField(default=0)
    disk_gb = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"reservation {self.pk}"


class Approval(TenantModel):
    """A launch over its catalog item's threshold, waiting for an org admin. Nobody decides their own request."""

    VIEW_ACTION: ClassVar[str] = "deployments.view"

    class State(models.TextChoices):
        PENDING = "pending", "Waiting"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Withdrawn"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="+")
    deployment = models.OneToOneField(Deployment, on_delete=models.CASCADE, related_name="approval")
    requested_by = models.ForeignKey("accounts.User", on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=300)  # why it needs one ("$412.00 a month, over the $200.00 threshold")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    decided_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    comment = models.CharField(max_length=1000, blank=True)
    expires_at = models.DateTimeField(db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"approval of {self.deployment_id}"


class Hook(TenantModel):
    """An HTTP endpoint told about launches. Before-launch hooks may veto; after-launch hooks are told of
    instances reaching running and of deletes. Payloads are signed with the hook's secret (stored encrypted)."""

    VIEW_ACTION: ClassVar[str] = "hooks.manage"

    class Phase(models.TextChoices):
        BEFORE = "before_launch", "Before launch (may veto)"
        AFTER = "after_launch", "After launch (told, cannot veto)"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    phase = models.CharField(max_length=14, choices=Phase.choices)
    secret_encrypted = models.TextField()  # Fernet; write-only
    secret_last4 = models.CharField(max_length=4, blank=True)
    timeout_seconds = models.PositiveSmallIntegerField(default=5)
    # a before-launch hook that times out or fails: deny the launch (default) or let it through
    allow_on_failure = models.BooleanField(default=False)
    is_enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["phase", "name"]
        constraints = [models.UniqueConstraint("organization", "name", name="hook_name_in_org")]

    def __str__(self) -> str:
        return self.name


class HookDelivery(TenantModel):
    """One call of a hook: what was sent (without the signature), what came back, how long it took."""

    VIEW_ACTION: ClassVar[str] = "hooks.manage"

    class State(models.TextChoices):
        PENDING = "pending", "Waiting to be sent"
        DELIVERED = "delivered", "Delivered"
        VETOED = "vetoed", "Vetoed"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    hook = models.ForeignKey(Hook, on_delete=models.CASCADE, related_name="deliveries")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="hook_deliveries")
    event = models.CharField(max_length=40)  # before_launch, instance.running, deployment.deleted, test
    delivery_id = models.CharField(max_length=40, unique=True)  # sent as X-Skyport-Delivery
    payload = models.JSONField(default=dict)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    message = models.CharField(max_length=1000, blank=True)  # the veto's words, or what went wrong
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["hook", "-created_at"], name="hook_delivery_recent")]

    def __str__(self) -> str:
        return f"{self.hook_id}:{self.event}"


class UnmanagedServer(TenantModel):
    """A server found in a cloud account that Skyport did not create (or no longer tracks). Never deleted
    automatically; an admin may adopt it into a deployment."""

    VIEW_ACTION: ClassVar[str] = "clouds.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    account = models.ForeignKey("clouds.CloudAccount", on_delete=models.CASCADE, related_name="unmanaged_servers")
    region = models.CharField(max_length=64)
    provider_server_id = models.CharField(max_length=255)
    name = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=20, blank=True)
    size_id = models.CharField(max_length=255, blank=True)
    private_ips = models.JSONField(default=list, blank=True)
    public_ips = models.JSONField(default=list, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    adopted_into = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["account_id", "region", "name"]
        constraints = [
            models.UniqueConstraint("account", "region", "provider_server_id", name="unmanaged_server_once"),
        ]

    def __str__(self) -> str:
        return self.name or self.provider_server_id


class SweepState(models.Model):
    """The reconciler's bookkeeping for one account-region: who holds the sweep (a lease taken by conditional
    UPDATE, so two workers never sweep the same one), when it last ran and when it is due next."""

    account = models.ForeignKey("clouds.CloudAccount", on_delete=models.CASCADE, related_name="+")
    region = models.CharField(max_length=64)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    next_sweep_at = models.DateTimeField(null=True, blank=True, db_index=True)
    failures = models.PositiveSmallIntegerField(default=0)  # consecutive; backs off and feeds account health
    last_error = models.CharField(max_length=1000, blank=True)
    servers_seen = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["account_id", "region"]
        constraints = [models.UniqueConstraint("account", "region", name="sweep_state_once")]

    def __str__(self) -> str:
        return f"sweep {self.account_id}/{self.region}"

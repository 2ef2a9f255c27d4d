"""State of the simulated clouds. Not tenant data: a sim cloud stands for a provider, keyed by the endpoint that
Skyport's cloud accounts point at (`sim://acme-east`). Read and written only through the "sim" connection."""

from __future__ import annotations

import datetime

from django.db import models
from django.utils import timezone


class SimCloud(models.Model):
    endpoint = models.CharField(max_length=200, unique=True)
    seed = models.BigIntegerField(default=0)
    api_key_hash = models.CharField(max_length=64)  # SHA-256 of the api_key credential the sim accepts
    regions = models.JSONField(default=list)  # region ids
    sizes = models.JSONField(default=list)  # [{id, name, vcpus, ram_mb, disk_gb, arch, gpus, price_per_hour}]
    images = models.JSONField(default=list)  # [{id, name, os, arch, owner, is_public, status, min_disk_gb, ...}]
    networks = models.JSONField(default=list)  # [{id, name, cidr, is_external}]
    quotas = models.JSONField(default=dict)  # {"instances": n, "vcpus": n, "ram_mb": n}
    capacity = models.JSONField(default=dict)  # {region: vcpus the region can still host in total}
    durations = models.JSONField(default=dict)  # seconds per transition: build, stop, start, reboot, resize, delete
    # the clock: frozen_at (tests) or the wall clock (demo), plus the seconds tests and latency faults added
    clock_frozen_at = models.DateTimeField(null=True, blank=True)
    clock_offset = models.FloatField(default=0.0)
    calls = models.PositiveBigIntegerField(default=0)  # every driver call, faults included
    call_counts = models.JSONField(default=dict)  # per method
    serial = models.PositiveBigIntegerField(default=0)  # source of ids and addresses
    # False once a call found no active fault; adding a fault sets it again (on this row, so a call waiting for the
    # row's lock sees it): calls of a cloud without faults make no fault query while they hold the lock
    faults_possible = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["endpoint"]

    def __str__(self) -> str:
        return self.endpoint

    def now(self) -> datetime.datetime:
        base = self.clock_frozen_at or timezone.now()
        return base + datetime.timedelta(seconds=self.clock_offset)

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def size(self, size_id: str) -> dict | None:
        return next((s for s in self.sizes if s["id"] == size_id), None)


class SimServer(models.Model):
    cloud = models.ForeignKey(SimCloud, on_delete=models.CASCADE, related_name="servers")
    server_id = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    region = models.CharField(max_length=64)
    size_id = models.CharField(max_length=64)
    image_id = models.CharField(max_length=64)
    network_id = models.CharField(max_length=64, blank=True)
    private_ip = models.CharField(max_length=64, blank=True)
    public_key = models.TextField(blank=True)
    firewall_id = models.CharField(max_length=64, blank=True)
    user_data = models.TextField(blank=True)
    tags = models.JSONField(default=dict)
    client_token = models.CharField(max_length=100, blank=True)
    # `state` is what the provider shows now; while `next_state` is set the server is in a transition that ends at
    # `transition_ends_at` (null: stuck for ever)
    state = models.CharField(max_length=16)
    next_state = models.CharField(max_length=16, blank=True)
    transition_ends_at = models.DateTimeField(null=True, blank=True)
    pending_size_id = models.CharField(max_length=64, blank=True)
    dies_at = models.DateTimeField(null=True, blank=True)
    fault = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint("cloud", "server_id", name="sim_server_id_unique"),
            models.UniqueConstraint(
                "cloud", "client_token", condition=~models.Q(client_token=""), name="sim_server_client_token_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.server_id} ({self.state})"


class SimPublicIP(models.Model):
    cloud = models.ForeignKey(SimCloud, on_delete=models.CASCADE, related_name="public_ips")
    ip_id = models.CharField(max_length=64)
    address = models.GenericIPAddressField()
    region = models.CharField(max_length=64)
    server = models.ForeignKey(SimServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="public_ips")
    tags = models.JSONField(default=dict)
    released = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint("cloud", "ip_id", name="sim_public_ip_id_unique")]

    def __str__(self) -> str:
        return self.address


class SimFirewall(models.Model):
    """A security group: named, per region, with inbound rules; in use while a live server names it."""

    cloud = models.ForeignKey(SimCloud, on_delete=models.CASCADE, related_name="firewalls")
    firewall_id = models.CharField(max_length=64)
    region = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    rules = models.JSONField(default=list)  # [{port, cidr, protocol}]
    tags = models.JSONField(default=dict)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint("cloud", "region", "name", name="sim_firewall_name_unique")]

    def __str__(self) -> str:
        return self.name


class SimFault(models.Model):
    """An injected misbehaviour. Fires on the `on_call`-th matching call after it was added, or with probability
    `rate` (drawn from the cloud's seed), or on every matching call when neither is set; `times` caps how often."""

    class Kind(models.TextChoices):
        ERROR = "error", "Error (error class below)"
        AUTH = "auth", "Authentication failure"
        THROTTLE = "throttle", "Throttling (transient)"
        LATENCY = "latency", "Latency (added to the clock)"
        DIE = "die", "Created servers die (→ error) after `seconds`"
        STUCK = "stuck", "The transition started by the call never ends"
        CRASH = "crash", "The call succeeds, then the caller's process dies (tests)"

    cloud = models.ForeignKey(SimCloud, on_delete=models.CASCADE, related_name="faults")
    method = models.CharField(max_length=64, default="*")  # driver method name, or * for any
    kind = models.CharField(max_length=16, choices=Kind.choices)
    error = models.CharField(max_length=32, blank=True)  # transient, capacity, quota, not_found, invalid, auth
    message = models.CharField(max_length=255, blank=True)
    on_call = models.PositiveIntegerField(null=True, blank=True)
    rate = models.FloatField(null=True, blank=True)
    times = models.PositiveIntegerField(null=True, blank=True)  # remaining firings; null: unlimited
    seconds = models.FloatField(default=0.0)  # latency, or time until a created server dies
    seen = models.PositiveIntegerField(default=0)
    fired = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} on {self.method}"

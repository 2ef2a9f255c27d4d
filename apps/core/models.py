from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.db import models

from apps.core.tenancy import ScopedManager, ScopedQuerySet, TenantModel


class AppendOnlyError(RuntimeError):
    pass


class AuditQuerySet(ScopedQuerySet):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("audit events are append-only")

    def delete(self):  # type: ignore[no-untyped-def]
        raise AppendOnlyError("audit events are append-only")


class AuditManager(ScopedManager.from_queryset(AuditQuerySet)):  # type: ignore[misc]
    pass


class AuditEvent(TenantModel):
    """One thing somebody (or the system) did. Written by services through `apps.core.audit.record`."""

    VIEW_ACTION: ClassVar[str] = "audit.view"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(
        "accounts.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150)  # kept when the user is deleted; "system" for jobs
    verb = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, db_index=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_label = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditManager()  # type: ignore[misc]

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.verb} {self.object_type} {self.object_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        raise AppendOnlyError("audit events are append-only")

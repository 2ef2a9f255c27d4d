"""The audit writer. Every service that changes something calls `record` once."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Iterable
from typing import Any

from django.db import models

from apps.core.access import tenant_of
from apps.core.context import client_ip_var, request_id_var
from apps.core.models import AuditEvent

REDACTED = "[redacted]"
SECRET_MARKERS = ("password", "secret", "token", "credential", "key_hash", "private_key", "api_key")


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def _plain(value: Any) -> Any:
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def snapshot(obj: models.Model, fields: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in fields:
        field = obj._meta.get_field(name)
        attname = getattr(field, "attname", name)
        out[name] = _plain(getattr(obj, attname))
    return out


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """{"field": {"from": x, "to": y}} for the fields that changed, secrets redacted."""
    before, after = before or {}, after or {}
    changes: dict[str, Any] = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if is_secret_field(name):
            old, new = (REDACTED if old is not None else None), (REDACTED if new is not None else None)
        changes[name] = {"from": old, "to": new}
    return changes


def record(
    *,
    actor: Any,
    verb: str,
    obj: models.Model | None = None,
    organization_id: int | None = None,
    project_id: int | None = None,
    object_type: str | None = None,
    object_id: Any = None,
    object_label: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> AuditEvent:
    if obj is not None:
        org_id, proj_id = tenant_of(obj)
        organization_id = organization_id or org_id
        project_id = project_id if project_id is not None else proj_id
        object_type = object_type or obj._meta.model_name
        object_id = object_id if object_id is not None else obj.pk
        object_label = object_label if object_label is not None else str(obj)[:200]
    changes: dict[str, Any] = diff(before, after)
    if extra:
        changes["_"] = {k: (REDACTED if is_secret_field(k) else _plain(v)) for k, v in extra.items()}
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    if organization_id is None:
        raise ValueError(f"audit event {verb!r} needs an organisation")
    event = AuditEvent(
        organization_id=organization_id,
        project_id=project_id,
        actor=actor if is_user else None,
        actor_label=actor.username if is_user else "system",
        verb=verb,
        object_type=object_type or "",
        object_id="" if object_id is None else str(object_id),
        object_label=(object_label or "")[:200],
        changes=changes,
        request_id=request_id_var.get(),
        ip=client_ip_var.get(),
    )
    project = obj._state.fields_cache.get("project") if obj is not None else None
    if project is not None and project.pk == project_id:
        event.project = project  # the organisation check on save reads it from the row in hand
    event.save()
    return event

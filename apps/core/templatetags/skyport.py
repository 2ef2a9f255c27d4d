"""Template helpers: permissions through the role table, Bootstrap form widgets, compact audit diffs."""

from __future__ import annotations

import json
from typing import Any

from django import forms, template
from django.utils.http import url_has_allowed_host_and_scheme

from apps.core.access import NO_ACCESS
from apps.core.roles import Role

register = template.Library()


@register.simple_tag(takes_context=True)
def can(context: template.Context, action: str, project: Any = None) -> bool:
    """{% can "members.manage" as can_manage %}: the role table, for the current organisation (or project)."""
    request = context.get("request")
    if request is None:
        return False
    access = getattr(request, "access", NO_ACCESS)
    org_id = getattr(request, "organization_id", None)
    project_id = getattr(project, "pk", project)
    return access.can(action, organization_id=org_id, project_id=project_id)


@register.filter
def can_do(frame: Any, action: str) -> bool:
    """{% if frame|can_do:"audit.view" %} — the current organisation, asked through the role table."""
    return bool(frame) and frame.can(action)


@register.filter
def bs_input(field: forms.BoundField, size: str = "") -> str:
    """Render a bound field's widget with Bootstrap classes and the aria attributes tying it to its messages.
    `{{ field|bs_input:"sm" }}` for the small variant."""
    widget = field.field.widget
    if isinstance(widget, forms.CheckboxInput):
        css, size = "form-check-input", ""
    elif isinstance(widget, forms.Select):
        css = "form-select"
    else:
        css = "form-control"
    sized = f"{css}-{size}" if size else ""
    classes = [widget.attrs.get("class", ""), css, sized, "is-invalid" if field.errors else ""]
    attrs: dict[str, str | bool] = {"class": " ".join(c for c in classes if c)}
    described = []
    if field.help_text:
        described.append(f"{field.auto_id}_helptext")
    if field.errors:
        attrs["aria-invalid"] = "true"
        described.append(f"{field.auto_id}_error")
    if described:
        attrs["aria-describedby"] = " ".join(described)
    return field.as_widget(attrs=attrs)


@register.filter
def role_label(value: str) -> str:
    try:
        return Role(value).label
    except ValueError:
        return value


def _short(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


@register.filter
def audit_changes(changes: Any) -> list[dict[str, str]]:
    """[{field, before, after}] from {"field": {"from": x, "to": y}, "_": {extra}} for a compact diff."""
    if not isinstance(changes, dict):
        return []
    rows: list[dict[str, str]] = []
    for name, change in changes.items():
        if name == "_" and isinstance(change, dict):
            rows += [{"field": k, "before": "", "after": _short(v), "extra": "1"} for k, v in change.items()]
        elif isinstance(change, dict) and ("from" in change or "to" in change):
            before, after = change.get("from"), change.get("to")
            if before is None and after in ("", None, [], {}):
                continue  # an empty field on a new object says nothing
            if before is None:  # a new object: its value is the whole story
                rows.append({"field": name, "before": "", "after": _short(after), "extra": "1"})
            else:
                rows.append({"field": name, "before": _short(before), "after": _short(after)})
        else:
            rows.append({"field": name, "before": "", "after": _short(change), "extra": "1"})
    return rows


@register.filter
def safe_link(url: str) -> str:
    """Only same-site relative links from stored data become hrefs (no javascript:, no other hosts)."""
    if url and url.startswith("/") and url_has_allowed_host_and_scheme(url, allowed_hosts=None):
        return url
    return ""


LEVEL_CLASSES = {
    "debug": "secondary",
    "info": "info",
    "success": "success",
    "warning": "warning",
    "error": "danger",
    "danger": "danger",
}


@register.filter
def level_class(level: str) -> str:
    """Bootstrap colour for a message tag or notification level."""
    return LEVEL_CLASSES.get(str(level).split(" ")[-1], "secondary")

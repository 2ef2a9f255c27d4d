"""Forms shared by the pages, and the one way a refused write becomes form errors."""

from __future__ import annotations

import datetime
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone


def add_service_error(
    form: forms.Form, error: ValidationError, field_map: dict[str, str] | None = None
) -> None:
    """Show a ServiceError (or a password validation error) on the form: field errors where the form has that
    field, the rest at the top of the form."""
    field_map = field_map or {}
    if hasattr(error, "error_dict"):
        for name, errors in error.error_dict.items():
            target = field_map.get(name, name)
            messages = [m for e in errors for m in e.messages]
            form.add_error(target if target in form.fields else None, messages)
    else:
        form.add_error(field_map.get("__all__"), error.messages)


class AuditFilterForm(forms.Form):
    actor = forms.CharField(
        required=False,
        max_length=150,
        label="Actor",
        widget=forms.TextInput(attrs={"placeholder": "username"}),
    )
    verb = forms.CharField(
        required=False,
        max_length=64,
        label="Action",
        widget=forms.TextInput(attrs={"placeholder": "e.g. membership."}),
        help_text="Matches the start of the action name.",
    )
    object_type = forms.ChoiceField(required=False, label="Object type")
    project = forms.TypedChoiceField(required=False, label="Project", coerce=int, empty_value=None)
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}), help_text="Inclusive."
    )
    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "object, actor or action"}),
    )

    def __init__(self, *args: Any, object_types: list[str], projects: list[Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["object_type"]).choices = [("", "Any")] + [
            (t, t) for t in object_types
        ]
        cast(forms.ChoiceField, self.fields["project"]).choices = [("", "Any")] + [
            (p.pk, p.name) for p in projects
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def selector_filters(self) -> dict[str, Any]:
        """Filters for apps.core.selectors.audit_events from the fields that validated."""
        data = getattr(self, "cleaned_data", {})
        filters: dict[str, Any] = {k: data.get(k) for k in ("actor", "verb", "object_type", "project", "q")}
        tz = timezone.get_current_timezone()
        if data.get("date_from"):
            filters["since"] = datetime.datetime.combine(data["date_from"], datetime.time.min, tzinfo=tz)
        if data.get("date_to"):
            next_day = data["date_to"] + datetime.timedelta(days=1)
            filters["until"] = datetime.datetime.combine(next_day, datetime.time.min, tzinfo=tz)
        return {k: v for k, v in filters.items() if v not in (None, "")}

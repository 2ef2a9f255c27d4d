"""Forms of the cloud pages. Secret fields are password inputs that are never rendered back."""

from __future__ import annotations

import json
from typing import Any, cast

from django import forms

from apps.clouds.services import PROVIDERS, ProviderSpec


def _credential_fields(spec: ProviderSpec, *, required: bool) -> dict[str, forms.Field]:
    fields: dict[str, forms.Field] = {}
    for f in spec.credentials:
        widget: forms.Widget = (
            forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            if f.secret
            else forms.TextInput(attrs={"autocomplete": "off"})
        )
        fields[f"cred_{f.name}"] = forms.CharField(
            label=f.label, required=required and f.required, max_length=4096, widget=widget, help_text=f.help,
            strip=True,
        )
    return fields


class _CredentialsMixin:
    spec: ProviderSpec
    cleaned_data: dict[str, Any]

    def credentials(self) -> dict[str, str]:
        values = {f.name: self.cleaned_data.get(f"cred_{f.name}") or "" for f in self.spec.credentials}
        return {k: v for k, v in values.items() if v}


class AccountForm(_CredentialsMixin, forms.Form):
    name = forms.CharField(max_length=100, help_text="How people will see this account, e.g. prod-eu.")
    regions = forms.CharField(max_length=1000, required=False, help_text="Separate regions with spaces or commas.")
    default_region = forms.CharField(max_length=64, required=False, help_text="Empty: the first region.")
    endpoint = forms.CharField(max_length=300, required=False)
    options = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}), label="Options (JSON)"
    )

    def __init__(self, *args: Any, kind: str, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = PROVIDERS[kind]
        self.fields["endpoint"].help_text = self.spec.endpoint_help
        self.fields["regions"].help_text = f"{self.spec.region_help} Separate regions with spaces or commas."
        self.fields["options"].help_text = self.spec.options_help or "Provider settings as a JSON object."
        creds = _credential_fields(self.spec, required=not editing)
        if editing:
            for field in creds.values():
                field.help_text = "Leave empty to keep the stored credentials; required when the endpoint changes."
        self.fields.update(creds)
        if not self.is_bound and not editing and self.spec.default_options:
            self.initial.setdefault("options", json.dumps(self.spec.default_options))

    def clean_options(self) -> dict[str, Any] | None:
        text = (self.cleaned_data.get("options") or "").strip()
        if not text:
            return None
        if len(text) > 8192:
            raise forms.ValidationError("Options take at most 8192 characters.")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise forms.ValidationError("This is not valid JSON.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object, e.g. {\"image_owners\": [\"self\"]}.")
        return cast(dict[str, Any], value)

    def region_list(self) -> list[str]:
        text = self.cleaned_data.get("regions") or ""
        return [r for r in text.replace(",", " ").split() if r]


class RotateForm(_CredentialsMixin, forms.Form):
    def __init__(self, *args: Any, kind: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = PROVIDERS[kind]
        self.fields.update(_credential_fields(self.spec, required=True))


class GrantForm(forms.Form):
    account = forms.TypedChoiceField(coerce=int, label="Cloud account")
    project = forms.TypedChoiceField(coerce=int, label="Project")
    regions = forms.CharField(
        required=False, max_length=1000, help_text="Empty: every region of the account. Otherwise separate with spaces."
    )

    def __init__(self, *args: Any, accounts: list[Any], projects: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["account"]).choices = [(a.pk, a.name) for a in accounts]
        cast(forms.ChoiceField, self.fields["project"]).choices = [(p.pk, p.name) for p in projects]

    def region_list(self) -> list[str]:
        return [r for r in (self.cleaned_data.get("regions") or "").replace(",", " ").split() if r]


class PriceForm(forms.Form):
    price = forms.DecimalField(
        required=False, min_value=0, max_digits=10, decimal_places=5, label="Price per hour",
        help_text="Empty: use the provider's price.",
    )


class AccessReviewFilterForm(forms.Form):
    account = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Account")
    project = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Project")
    user = forms.CharField(required=False, max_length=150, label="User", widget=forms.TextInput(
        attrs={"placeholder": "username"}))

    def __init__(self, *args: Any, accounts: list[Any], projects: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["account"]).choices = [("", "Any")] + [(a.pk, a.name) for a in accounts]
        cast(forms.ChoiceField, self.fields["project"]).choices = [("", "Any")] + [(p.pk, p.name) for p in projects]

    def filters(self) -> dict[str, Any]:
        data = self.cleaned_data if self.is_valid() else {}
        return {"account_id": data.get("account"), "project_id": data.get("project"),
                "username": data.get("user") or None}

"""Forms of the deployment pages. They check shapes only; every rule about what may be done is the services'.

The launch form asks for three things (name, size, where) and keeps the rest — blueprint parameters, the SSH key,
the lease — under "More options", each with its default filled in.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, cast

from django import forms
from django.utils.text import slugify

from apps.catalog.blueprints import parameter_values
from apps.deployments.models import Deployment, Hook
from apps.deployments.states import DeploymentState

POLICY_CHOICES = [
    (Deployment.Policy.CHEAPEST.value, "Cheapest cloud that fits"),
    (Deployment.Policy.SPREAD.value, "Spread across clouds (high availability)"),
    (Deployment.Policy.ORDERED.value, "First cloud that works, in order (falls back when one refuses)"),
]
ACCOUNT_PREFIX = "account:"
PARAM_PREFIX = "param_"
PROBLEM_RE = re.compile(r"^parameter '([^']+)' (.*)$")
MONO = {"class": "font-monospace", "spellcheck": "false", "autocomplete": "off", "autocapitalize": "off"}


def _choices(field: forms.Field, choices: list[tuple[Any, str]]) -> None:
    cast(forms.ChoiceField, field).choices = choices


def suggested_name(item_slug: str) -> str:
    """A name that passes the launch's rule (lowercase, starts with a letter, at most 30 characters), unique enough
    that launching the same item twice does not clash."""
    base = re.sub(r"-+", "-", slugify(item_slug)).strip("-")[:24].strip("-") or "server"
    if not base[0].isalpha():
        base = f"d-{base}"[:24].strip("-")
    return f"{base}-{secrets.token_hex(2)}"


class LaunchForm(forms.Form):
    """Launch one catalog item in one project."""

    name = forms.CharField(max_length=63, label="Name",
                           help_text="Lowercase letters, digits and '-', starting with a letter; servers are named "
                                     "after it.",
                           widget=forms.TextInput(attrs={**MONO, "class": "font-monospace"}))
    size = forms.ChoiceField(label="Size")
    cloud = forms.ChoiceField(label="Where", initial=Deployment.Policy.CHEAPEST.value)
    ssh_key = forms.ChoiceField(label="SSH key", required=False,
                                help_text="Installed for the image's default user. Add keys under Profile → SSH "
                                          "keys.")
    lease_days = forms.IntegerField(label="Lease (days)", required=False, min_value=1, max_value=3650,
                                    help_text="Empty: no lease.")
    project = forms.IntegerField(widget=forms.HiddenInput)
    idempotency_key = forms.CharField(max_length=100, required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, item: Any, sizes: list[Any], accounts: list[Any], ssh_keys: list[Any],
                 parameters: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.item = item
        self.parameters = parameters or {}
        if item.kind == "image":
            _choices(self.fields["size"], [(p.slug, f"{p.name} · {p.vcpus} vCPU · {p.ram_gib} GiB RAM"
                                                    f"{f' · {p.disk_gb} GB disk' if p.disk_gb else ''}")
                                           for p in sizes])
            self.fields["size"].initial = item.profile.slug if item.profile is not None else None
        else:
            del self.fields["size"]  # a blueprint's servers have their own sizes
        _choices(self.fields["cloud"], [*POLICY_CHOICES, *[
            (f"{ACCOUNT_PREFIX}{a.pk}", f"Only {a.name}") for a in accounts
        ]])
        _choices(self.fields["ssh_key"], [("", "No key (console only)"), *[
            (str(k.pk), f"{k.name} · {k.fingerprint}") for k in ssh_keys
        ]])
        if ssh_keys and not self.is_bound:
            self.fields["ssh_key"].initial = str(ssh_keys[0].pk)
        lease = self.fields["lease_days"]
        lease.initial = item.lease_days
        if item.lease_max_days:
            cast(forms.IntegerField, lease).max_value = item.lease_max_days
            lease.widget.attrs["max"] = item.lease_max_days
            lease.help_text = f"At most {item.lease_max_days} days for {item.name}."
            lease.required = True
        elif item.lease_days:
            lease.help_text = f"{item.name} is leased for {item.lease_days} days by default."
        for name, spec in self.parameters.items():
            self.fields[PARAM_PREFIX + name] = _parameter_field(name, spec)

    # the fields shown under "More options"
    def option_fields(self) -> list[forms.BoundField]:
        names = [PARAM_PREFIX + n for n in self.parameters] + ["ssh_key", "lease_days"]
        return [self[n] for n in names]

    def options_need_attention(self) -> bool:
        return any(self[n].errors for n in [PARAM_PREFIX + p for p in self.parameters] + ["ssh_key", "lease_days"])

    def parameter_values(self) -> dict[str, Any]:
        """The parameters as the launch service takes them (text read by the blueprint's types)."""
        data = getattr(self, "cleaned_data", {})
        values: dict[str, Any] = {}
        for name in self.parameters:
            value = data.get(PARAM_PREFIX + name)
            if value is None or value == "":
                continue
            values[name] = value
        return values

    def policy_and_account(self) -> tuple[str, int | None]:
        cloud = self.cleaned_data.get("cloud") or Deployment.Policy.CHEAPEST
        if cloud.startswith(ACCOUNT_PREFIX):
            return Deployment.Policy.ACCOUNT, int(cloud[len(ACCOUNT_PREFIX):])
        return cloud, None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.parameters:
            given = {n: data[PARAM_PREFIX + n] for n in self.parameters
                     if data.get(PARAM_PREFIX + n) not in (None, "")}
            _values, problems = parameter_values({"parameters": self.parameters}, given)
            for problem in problems:
                match = PROBLEM_RE.match(problem)
                field = PARAM_PREFIX + match.group(1) if match else None
                text = (match.group(2) if match else problem).rstrip(".")
                if field in self.fields and field not in self.errors:
                    self.add_error(field, text[:1].upper() + text[1:] + ".")
                elif field not in self.fields:
                    self.add_error(None, problem[:1].upper() + problem[1:] + ".")
        return data


def _parameter_field(name: str, spec: dict[str, Any]) -> forms.Field:
    kind = spec.get("type", "string")
    has_default = "default" in spec
    label = name.replace("_", " ").capitalize()
    help_text = str(spec.get("description") or "")
    field: forms.Field
    if kind == "boolean":
        # a checkbox cannot say "not given": unchecked is false, which the blueprint then receives
        return forms.BooleanField(label=label, required=False, initial=bool(spec.get("default")), help_text=help_text)
    if kind == "choice":
        choices = [(str(c), str(c)) for c in spec.get("choices") or []]
        field = forms.ChoiceField(label=label, required=not has_default, choices=choices, help_text=help_text)
    elif kind in ("integer", "number"):
        attrs: dict[str, Any] = {"inputmode": "numeric" if kind == "integer" else "decimal"}
        if spec.get("min") is not None:
            attrs["min"] = spec["min"]
        if spec.get("max") is not None:
            attrs["max"] = spec["max"]
        if kind == "number":
            attrs["step"] = "any"
        field = forms.CharField(label=label, required=not has_default, max_length=40,
                                widget=forms.NumberInput(attrs=attrs), help_text=help_text)
    else:
        field = forms.CharField(label=label, required=not has_default, max_length=4000, strip=False,
                                help_text=help_text)
    if has_default:
        field.initial = str(spec["default"])
    return field


class DeploymentFilterForm(forms.Form):
    owner = forms.ChoiceField(required=False, label="Whose", choices=[("", "Mine"), ("all", "Everyone's")])
    project = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Project")
    state = forms.ChoiceField(required=False, label="State")

    def __init__(self, *args: Any, projects: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["project"], [("", "All projects"), *[(p.pk, p.name) for p in projects]])
        _choices(self.fields["state"], [("", "Not deleted"), ("all", "Any, deleted too"),
                                        *DeploymentState.choices])


BULK_ACTIONS = [("start", "Start"), ("stop", "Stop"), ("delete", "Delete")]


class BulkForm(forms.Form):
    ids = forms.TypedMultipleChoiceField(coerce=int, label="Deployments",
                                         error_messages={"required": "Select at least one deployment."})
    action = forms.ChoiceField(choices=BULK_ACTIONS)

    def __init__(self, *args: Any, ids: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["ids"], [(pk, str(pk)) for pk in ids])


DEPLOYMENT_ACTIONS = [("start", "Start all"), ("stop", "Stop all"), ("reboot", "Reboot all"), ("delete", "Delete"),
                      ("resync", "Sync now"), ("retry", "Retry failed servers"), ("cancel", "Cancel")]
INSTANCE_ACTIONS = [("start", "Start"), ("stop", "Stop"), ("reboot", "Reboot"), ("resize", "Resize"),
                    ("delete", "Delete"), ("resync", "Sync now")]


class DeploymentActionForm(forms.Form):
    action = forms.ChoiceField(choices=DEPLOYMENT_ACTIONS)


class InstanceActionForm(forms.Form):
    action = forms.ChoiceField(choices=INSTANCE_ACTIONS)
    size = forms.SlugField(required=False, max_length=60)


class ExtendForm(forms.Form):
    lease_days = forms.IntegerField(min_value=1, max_value=3650, label="Days from now",
                                    error_messages={"required": "Give the number of days."})


class TransferForm(forms.Form):
    owner = forms.TypedChoiceField(coerce=int, label="New owner",
                                   error_messages={"required": "Choose who takes it over."})

    def __init__(self, *args: Any, users: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["owner"], [("", "—"), *[(u.pk, f"{u.display_name} ({u.username})") for u in users]])


class ApprovalDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    comment = forms.CharField(max_length=1000, required=False, label="Comment",
                              widget=forms.TextInput(attrs={"placeholder": "required to reject"}))


QUOTA_LIMITS = (("max_instances", "Servers"), ("max_vcpus", "vCPU"), ("max_ram_mb", "RAM (MiB)"),
                ("max_disk_gb", "Disk (GB)"))


class QuotaForm(forms.Form):
    scope = forms.ChoiceField(choices=[("organization", "The whole organisation"), ("project", "One project"),
                                       ("user", "One person")], initial="project", label="Applies to")
    project = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Project")
    user = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Person")
    max_instances = forms.IntegerField(required=False, min_value=0, max_value=1_000_000, label="Servers")
    max_vcpus = forms.IntegerField(required=False, min_value=0, max_value=10_000_000, label="vCPU")
    max_ram_mb = forms.IntegerField(required=False, min_value=0, max_value=2_000_000_000, label="RAM (MiB)")
    max_disk_gb = forms.IntegerField(required=False, min_value=0, max_value=2_000_000_000, label="Disk (GB)")

    def __init__(self, *args: Any, projects: list[Any], users: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["project"], [("", "—"), *[(p.pk, p.name) for p in projects]])
        _choices(self.fields["user"], [("", "—"), *[(u.pk, f"{u.display_name} ({u.username})") for u in users]])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        scope = data.get("scope")
        if scope == "project" and not data.get("project"):
            self.add_error("project", "Choose the project.")
        if scope == "user" and not data.get("user"):
            self.add_error("user", "Choose the person.")
        if scope != "project":
            data["project"] = None
        if scope != "user":
            data["user"] = None
        return data


class HookForm(forms.Form):
    name = forms.CharField(max_length=100)
    url = forms.CharField(max_length=500, label="URL", widget=forms.URLInput(attrs={"placeholder": "https://…"}))
    phase = forms.ChoiceField(choices=Hook.Phase.choices, label="When")
    secret = forms.CharField(max_length=500, label="Secret", strip=False,
                             help_text="At least 16 characters; requests are signed with it. Never shown again.",
                             widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}))
    timeout_seconds = forms.IntegerField(min_value=1, max_value=30, initial=5, label="Timeout (seconds)")
    allow_on_failure = forms.BooleanField(required=False, label="Let launches through when the hook fails",
                                          help_text="Before-launch hooks only; off: a hook that cannot answer "
                                                    "refuses the launch.")
    is_enabled = forms.BooleanField(required=False, initial=True, label="Enabled")

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            self.fields["secret"].required = False
            self.fields["secret"].help_text = "Leave empty to keep the current secret; a new one rotates it."


class AdoptForm(forms.Form):
    project = forms.TypedChoiceField(coerce=int, label="Into project")
    name = forms.CharField(max_length=63, label="Deployment name")

    def __init__(self, *args: Any, projects: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["project"], [(p.pk, p.name) for p in projects])


class SshKeyForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"placeholder": "laptop"}))
    public_key = forms.CharField(
        max_length=16_384, strip=True, label="Public key",
        help_text="One line from your .pub file, e.g. <code>ssh-ed25519 AAAA… you@laptop</code>.",
        widget=forms.Textarea(attrs={**MONO, "rows": 4, "placeholder": "ssh-ed25519 AAAA… you@laptop"}),
    )

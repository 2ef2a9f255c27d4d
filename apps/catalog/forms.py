"""Forms of the catalog pages. They check shapes only; every rule about what may be done is the services'."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from django import forms

from apps.catalog.models import Arch, CatalogItem

SHA256_HELP = "Optional: 64 hexadecimal characters; the import is refused when the file does not match."
CHECKBOXES = forms.CheckboxSelectMultiple(attrs={"class": "form-check-input"})
RADIOS = forms.RadioSelect(attrs={"class": "form-check-input"})
MONO = {"class": "font-monospace", "spellcheck": "false", "autocomplete": "off", "autocapitalize": "off"}


def _choices(field: forms.Field, choices: list[tuple[Any, str]]) -> None:
    cast(forms.ChoiceField, field).choices = choices


def _clean_sha256(value: str) -> str:
    value = (value or "").strip().lower()
    if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise forms.ValidationError("A SHA-256 checksum is 64 hexadecimal characters.")
    return value


# --- images -------------------------------------------------------------------------------------------------------
class _ImageMetaForm(forms.Form):
    """What every import asks: where the image belongs and how people will recognise it."""

    project = forms.TypedChoiceField(coerce=int, label="Project", help_text="The project whose designers manage it.")
    name = forms.CharField(max_length=100)
    version = forms.CharField(max_length=40, required=False, help_text="e.g. 2024.06 or 12.5")
    os = forms.CharField(max_length=60, required=False, label="Operating system",
                         widget=forms.TextInput(attrs={"placeholder": "Debian"}))
    os_version = forms.CharField(max_length=40, required=False, label="OS version")
    description = forms.CharField(max_length=4000, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, projects: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["project"], [(p.pk, p.name) for p in projects])


class ImageUploadForm(_ImageMetaForm):
    file = forms.FileField(label="Disk image file", help_text="qcow2, raw, VMDK, VHD or VHDX; the format is detected.")
    arch = forms.ChoiceField(choices=Arch.choices, initial=Arch.X86_64, label="Architecture")
    expected_sha256 = forms.CharField(max_length=64, required=False, label="SHA-256 (optional)",
                                      help_text=SHA256_HELP, widget=forms.TextInput(attrs=MONO))

    def clean_expected_sha256(self) -> str:
        return _clean_sha256(self.cleaned_data.get("expected_sha256", ""))


class ImageUrlForm(_ImageMetaForm):
    url = forms.URLField(max_length=2000, label="Download URL", assume_scheme="https",
                         help_text="http or https; downloaded and checked in the background.")
    arch = forms.ChoiceField(choices=Arch.choices, initial=Arch.X86_64, label="Architecture")
    expected_sha256 = forms.CharField(max_length=64, required=False, label="SHA-256 (optional)",
                                      help_text=SHA256_HELP, widget=forms.TextInput(attrs=MONO))

    def clean_expected_sha256(self) -> str:
        return _clean_sha256(self.cleaned_data.get("expected_sha256", ""))


class ImageProviderForm(_ImageMetaForm):
    cloud_image = forms.TypedChoiceField(coerce=int, label="Provider image",
                                         help_text="Images synced from the cloud accounts your projects may use.")

    def __init__(self, *args: Any, cloud_images: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["cloud_image"], [
            (i.pk, f"{i.name} — {i.account.name} {i.region}{' · ' + i.os if i.os else ''}") for i in cloud_images
        ])


IMPORT_FORMS: dict[str, type[_ImageMetaForm]] = {
    "upload": ImageUploadForm, "url": ImageUrlForm, "provider": ImageProviderForm,
}


class PushForm(forms.Form):
    targets = forms.MultipleChoiceField(widget=CHECKBOXES, label="Push to",
                                        error_messages={"required": "Choose at least one account and region."})

    def __init__(self, *args: Any, targets: list[tuple[Any, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_map = {f"{account.pk}:{region}": (account, region) for account, region in targets}
        _choices(self.fields["targets"], [
            (key, f"{account.name} · {region}") for key, (account, region) in self.target_map.items()
        ])

    def chosen(self) -> list[tuple[Any, str]]:
        return [self.target_map[key] for key in self.cleaned_data["targets"]]


class ApproveForm(forms.Form):
    note = forms.CharField(max_length=500, required=False, label="Note",
                           widget=forms.TextInput(attrs={"placeholder": "optional"}))


class RevokeForm(forms.Form):
    note = forms.CharField(max_length=500, label="Why", widget=forms.TextInput(attrs={"placeholder": "required"}),
                           error_messages={"required": "Say why the image is revoked."})


class ShareForm(forms.Form):
    project = forms.TypedChoiceField(coerce=int, label="Share with project")

    def __init__(self, *args: Any, projects: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["project"], [(p.pk, p.name) for p in projects])


class ImageEditForm(forms.Form):
    """The details people recognise an image by; the file, its format and checksum never change."""

    name = forms.CharField(max_length=100)
    version = forms.CharField(max_length=40, required=False, help_text="e.g. 2024.06 or 12.5")
    os = forms.CharField(max_length=60, required=False, label="Operating system")
    os_version = forms.CharField(max_length=40, required=False, label="OS version")
    arch = forms.ChoiceField(choices=Arch.choices, label="Architecture")
    min_disk_gb = forms.IntegerField(min_value=0, max_value=1024 * 1024, label="Minimum disk (GB)")
    min_ram_mb = forms.IntegerField(min_value=0, max_value=1024 * 1024, label="Minimum RAM (MiB)")
    description = forms.CharField(max_length=4000, required=False, widget=forms.Textarea(attrs={"rows": 3}))


# --- hardware profiles --------------------------------------------------------------------------------------------
class ProfileForm(forms.Form):
    name = forms.CharField(max_length=60)
    vcpus = forms.IntegerField(min_value=1, max_value=512, label="vCPUs")
    ram_mb = forms.IntegerField(min_value=128, max_value=4 * 1024 * 1024, label="RAM (MiB)")
    disk_gb = forms.IntegerField(min_value=0, max_value=65536, initial=0, label="Disk (GB)",
                                 help_text="0: the image's own minimum.")
    gpus = forms.IntegerField(min_value=0, max_value=16, initial=0, label="GPUs")
    description = forms.CharField(max_length=500, required=False)


# --- blueprints ---------------------------------------------------------------------------------------------------
SOURCE_WIDGET = forms.Textarea(attrs={**MONO, "rows": 22, "class": "font-monospace sky-source", "wrap": "off"})


class BlueprintSourceForm(forms.Form):
    source = forms.CharField(max_length=200_000, strip=False, label="Blueprint (YAML)", widget=SOURCE_WIDGET)
    note = forms.CharField(max_length=300, required=False, label="What changed",
                           widget=forms.TextInput(attrs={"placeholder": "optional note for the history"}))


class BlueprintCreateForm(BlueprintSourceForm):
    project = forms.TypedChoiceField(coerce=int, label="Project")
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=1000, required=False)

    field_order = ["project", "name", "description", "source", "note"]

    def __init__(self, *args: Any, projects: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["project"], [(p.pk, p.name) for p in projects])


class BlueprintValidateForm(forms.Form):
    source = forms.CharField(max_length=200_000, strip=False, required=False)
    blueprint = forms.IntegerField(required=False)


class BlueprintRenameForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=1000, required=False)


# --- catalog items ------------------------------------------------------------------------------------------------
class CatalogItemForm(forms.Form):
    project = forms.TypedChoiceField(coerce=int, label="Managed by project")
    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=CatalogItem.Kind.choices, widget=RADIOS, label="What it launches",
                             initial=CatalogItem.Kind.IMAGE)
    image = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)
    profile = forms.TypedChoiceField(coerce=int, required=False, empty_value=None, label="Hardware profile")
    blueprint_version = forms.TypedChoiceField(coerce=int, required=False, empty_value=None,
                                               label="Blueprint version")
    summary = forms.CharField(max_length=200, required=False, help_text="One line on the catalog card.")
    description = forms.CharField(max_length=8000, required=False, widget=forms.Textarea(attrs={"rows": 4}))
    icon = forms.ChoiceField(choices=[(i, i) for i in CatalogItem.ICONS], initial="server",
                             widget=RADIOS)
    approval_threshold_monthly = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=12, decimal_places=2, label="Approval above (per month)",
        help_text="Launches estimated above this monthly cost need an approval. Empty: never; 0: always.",
    )
    publish_to = forms.TypedMultipleChoiceField(coerce=int, required=False, widget=CHECKBOXES,
                                                label="Published to")

    def __init__(self, *args: Any, projects: list[Any], publish_projects: list[Any], images: list[Any],
                 profiles: list[Any], versions: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choices(self.fields["project"], [(p.pk, p.name) for p in projects])
        _choices(self.fields["publish_to"], [(p.pk, p.name) for p in publish_projects])
        _choices(self.fields["image"], [("", "—")] + [
            (i.pk, f"{i}{'' if i.is_approved else ' (' + i.get_approval_display().lower() + ')'}") for i in images
        ])
        _choices(self.fields["profile"], [("", "—")] + [
            (p.pk, f"{p.name} · {p.vcpus} vCPU · {p.ram_gib} GiB") for p in profiles
        ])
        _choices(self.fields["blueprint_version"], [("", "—")] + [
            (v.pk, f"{v.blueprint.name} v{v.number}") for v in versions
        ])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("kind") == CatalogItem.Kind.IMAGE:
            for name in ("image", "profile"):
                if not data.get(name):
                    self.add_error(name, "Choose one for an image item.")
            data["blueprint_version"] = None
        elif data.get("kind") == CatalogItem.Kind.BLUEPRINT:
            if not data.get("blueprint_version"):
                self.add_error("blueprint_version", "Choose the blueprint version to launch.")
            data["image"] = data["profile"] = None
        return data


class CatalogSearchForm(forms.Form):
    q = forms.CharField(max_length=100, required=False, label="Search the catalog",
                        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Search the catalog",
                                                      "autocomplete": "off"}))

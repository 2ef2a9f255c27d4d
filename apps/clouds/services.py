"""Every write about cloud accounts: accounts, credentials, grants, prices and the catalogue sync.

Provider calls (credential checks, catalogue lists) are made before any transaction opens: a slow or hanging
provider never holds a database transaction or a row lock, and a refused check stores nothing. Credentials are
passed to the driver and to `CloudAccount.set_credentials` only: never to the audit trail, a log line or an error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import Organization, Project, User
from apps.clouds import drivers
from apps.clouds.drivers import base
from apps.clouds.drivers.base import scrub_secrets
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Health, Network
from apps.core import audit
from apps.core.netsafety import UnsafeURLError, check_url
from apps.core.permissions import ServiceError, require

log = logging.getLogger(__name__)


# --- what each provider type needs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CredentialField:
    name: str
    label: str
    secret: bool = False
    required: bool = True
    help: str = ""


@dataclass(frozen=True)
class ProviderSpec:
    kind: str
    label: str
    help: str
    credentials: tuple[CredentialField, ...]
    endpoint_required: bool = False
    endpoint_help: str = ""
    region_help: str = ""
    options_help: str = ""
    default_options: dict[str, Any] = field(default_factory=dict)

    @property
    def secret_field(self) -> str:
        return next(f.name for f in self.credentials if f.secret)

    @property
    def is_network_endpoint(self) -> bool:
        return self.kind != "sim"


PROVIDERS: dict[str, ProviderSpec] = {
    "sim": ProviderSpec(
        kind="sim",
        label="Simulated cloud",
        help="An in-process cloud for the demo and tests: realistic server states, quotas, capacity and faults, "
        "no real resources. Available when SKYPORT_ENABLE_SIM is on.",
        credentials=(
            CredentialField("api_key", "API key", secret=True, help="The key the simulated cloud was created with."),
        ),
        endpoint_help="The simulated cloud's name, sim://<name> (empty: the default one).",
        region_help="For example region-1, region-2.",
    ),
    "ec2": ProviderSpec(
        kind="ec2",
        label="Amazon EC2",
        help="An AWS account (or an EC2-compatible API). Use an IAM user limited to EC2 for Skyport.",
        credentials=(
            CredentialField("access_key", "Access key ID", help="Starts with AKIA…"),
            CredentialField("secret_key", "Secret access key", secret=True),
            CredentialField("session_token", "Session token", secret=True, required=False,
                            help="Only for temporary (STS) credentials."),
        ),
        endpoint_help="Leave empty for AWS itself; fill in only for an EC2-compatible API (https://…).",
        region_help="AWS region codes, for example eu-west-1, us-east-1.",
        options_help='JSON, e.g. {"image_owners": ["self", "099720109477"], "image_name_patterns": '
        '["ubuntu/images/*24.04*"]}: which images are synced (EC2 offers thousands).',
        default_options={"image_owners": ["self"]},
    ),
    "openstack": ProviderSpec(
        kind="openstack",
        label="OpenStack",
        help="A project in an OpenStack cloud (keystone v3). Skyport needs nova, neutron and glance.",
        credentials=(
            CredentialField("username", "Username"),
            CredentialField("password", "Password", secret=True),
        ),
        endpoint_required=True,
        endpoint_help="The keystone v3 URL, for example https://keystone.example.org:5000/v3.",
        region_help="Region names from keystone, for example RegionOne.",
        options_help='JSON, e.g. {"project_name": "demo", "user_domain_name": "Default", '
        '"project_domain_name": "Default"}.',
        default_options={"project_name": "", "user_domain_name": "Default", "project_domain_name": "Default"},
    ),
    "libcloud": ProviderSpec(
        kind="libcloud",
        label="Other (Apache Libcloud)",
        help="Any compute provider Apache Libcloud speaks, named by its libcloud provider constant.",
        credentials=(
            CredentialField("key", "Key / user id"),
            CredentialField("secret", "Secret", secret=True),
        ),
        endpoint_help="Only when the provider needs one (https://…).",
        region_help="The provider's region names.",
        options_help='JSON: {"provider": "<libcloud provider name, e.g. digital_ocean>"} plus driver arguments.',
        default_options={"provider": ""},
    ),
}

REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ACCOUNT_FIELDS = ("name", "slug", "kind", "endpoint", "regions", "default_region", "options", "is_active")
MAX_IMAGES_PER_REGION = 1000


def provider_spec(kind: str) -> ProviderSpec:
    if kind not in drivers.enabled_kinds() or kind not in PROVIDERS:
        choices = ", ".join(k for k in drivers.enabled_kinds() if k in PROVIDERS)
        raise ServiceError({"kind": f"Unknown or disabled cloud type {kind!r}: choose one of {choices}."})
    return PROVIDERS[kind]


# a provider message must never carry a credential back to the person (some APIs echo what they got)
_redact = scrub_secrets


def _clean_credentials(spec: ProviderSpec, credentials: Any) -> dict[str, str]:
    if not isinstance(credentials, dict):
        raise ServiceError({"credentials": "Give the credentials as fields (" + _field_names(spec) + ")."})
    known = {f.name for f in spec.credentials}
    unknown = sorted(set(credentials) - known)
    if unknown:
        raise ServiceError(
            {"credentials": f"{spec.label} accounts take {_field_names(spec)}; not {', '.join(unknown)}."}
        )
    cleaned: dict[str, str] = {}
    missing = []
    for f in spec.credentials:
        value = credentials.get(f.name)
        value = value.strip() if isinstance(value, str) else ""
        if not value and f.required:
            missing.append(f.label)
        if value:
            cleaned[f.name] = value
    if missing:
        raise ServiceError({"credentials": f"Fill in: {', '.join(missing)}."})
    return cleaned


def _field_names(spec: ProviderSpec) -> str:
    return ", ".join(f.name for f in spec.credentials)


def _clean_regions(regions: Any, default_region: str) -> tuple[list[str], str]:
    if regions is None:
        regions = []
    if isinstance(regions, str):
        regions = [r.strip() for r in regions.replace(",", " ").split()]
    if not isinstance(regions, list | tuple) or not all(isinstance(r, str) for r in regions):
        raise ServiceError({"regions": "Give a list of region names."})
    cleaned: list[str] = []
    for region in regions:
        if not REGION_RE.match(region):
            raise ServiceError(
                {"regions": f"{region[:70]!r} is not a region name (letters, digits, '.', '_' and '-', up to 64)."}
            )
        if region not in cleaned:
            cleaned.append(region)
    default_region = (default_region or "").strip()
    if default_region and not REGION_RE.match(default_region):
        raise ServiceError({"default_region": f"{default_region[:70]!r} is not a region name."})
    if default_region and cleaned and default_region not in cleaned:
        raise ServiceError({"default_region": "The default region must be one of the account's regions."})
    if not cleaned and not default_region:
        raise ServiceError({"regions": "Name at least one region."})
    return cleaned, default_region or cleaned[0]


# Options that decide where (and how safely) the stored secret is sent: they belong in `endpoint`, which is checked
# by the outbound rules and needs the credentials again when it changes.
WHERE_SECRETS_GO = frozenset({"host", "port", "secure", "url", "verify", "base_url", "api_url", "region_url"})
OPTIONS_MAX_DEPTH = 5
OPTIONS_MAX_BYTES = 8192


def _walk_option_keys(value: Any, depth: int = 1) -> Any:
    """Yield every key of a nested options object; refuse objects deeper than OPTIONS_MAX_DEPTH."""
    if depth > OPTIONS_MAX_DEPTH:
        raise ServiceError({"options": f"Options nest at most {OPTIONS_MAX_DEPTH} levels deep."})
    if isinstance(value, dict):
        for key, inner in value.items():
            yield str(key)
            yield from _walk_option_keys(inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            yield from _walk_option_keys(inner, depth + 1)


def _clean_options(spec: ProviderSpec, options: Any) -> dict[str, Any]:
    if options is None:
        return dict(spec.default_options)
    if not isinstance(options, dict):
        raise ServiceError({"options": "Options are a JSON object."})
    for key in _walk_option_keys(options):
        lowered = key.lower()
        if audit.is_secret_field(key) or ("auth" in lowered and "url" in lowered):
            raise ServiceError({"options": f"{key!r} looks like a secret or an address: put secrets in the "
                                           "credential fields and the address in the endpoint."})
        if lowered in WHERE_SECRETS_GO:
            raise ServiceError({"options": f"{key!r} decides where the credentials are sent: set the endpoint "
                                           "instead (it is checked and needs the credentials again)."})
    if len(json.dumps(options)) > OPTIONS_MAX_BYTES:
        raise ServiceError({"options": f"Options take at most {OPTIONS_MAX_BYTES} bytes."})
    for key in ("image_owners", "image_name_patterns"):
        value = options.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ServiceError({"options": f"{key} is a list of strings."})
    return options


def _clean_endpoint(spec: ProviderSpec, endpoint: str) -> str:
    endpoint = (endpoint or "").strip()
    if not spec.is_network_endpoint:
        if endpoint and not endpoint.startswith("sim://"):
            raise ServiceError({"endpoint": "A simulated cloud's endpoint is empty or sim://<name>."})
        return endpoint
    if not endpoint:
        if spec.endpoint_required:
            raise ServiceError({"endpoint": f"{spec.label} accounts need an endpoint. {spec.endpoint_help}"})
        return ""
    if len(endpoint) > 300:
        raise ServiceError({"endpoint": "The endpoint is too long (300 characters at most)."})
    try:
        check_url(endpoint)
    except UnsafeURLError as e:
        raise ServiceError({"endpoint": str(e)}) from None
    return endpoint


def _check_with_provider(
    spec: ProviderSpec,
    *,
    credentials: dict[str, str],
    endpoint: str,
    regions: list[str],
    default_region: str,
    options: dict[str, Any],
) -> None:
    """Ask the provider whether it accepts these credentials (and knows these regions). No transaction is open."""
    try:
        driver = drivers.build_driver(
            spec.kind, credentials=credentials, region=default_region, endpoint=endpoint or None, options=options
        )
        driver.validate_credentials()
        offered = {r.id for r in driver.list_regions()}
    except base.AuthError as e:
        raise ServiceError({"credentials": _redact(e.message, credentials)}) from None
    except base.InvalidRequestError as e:
        raise ServiceError(_redact(e.message, credentials)) from None
    except base.CloudError as e:
        raise ServiceError(
            {"endpoint": f"{spec.label} could not be reached or answered an error: {_redact(e.message, credentials)}"}
        ) from None
    except Exception:
        # a driver bug must not leak a traceback (or what it was called with) into a page
        log.exception("credential check of a %s account failed unexpectedly", spec.kind)
        raise ServiceError(f"{spec.label} check failed unexpectedly; see the server log.") from None
    unknown = [r for r in regions if offered and r not in offered]
    if unknown:
        raise ServiceError(
            {"regions": f"{spec.label} does not offer {', '.join(unknown)}; it offers {', '.join(sorted(offered))}."}
        )


def _unique_slug(organization_id: int, wanted: str, exclude_pk: int | None = None) -> None:
    clash = CloudAccount.objects.all_tenants().filter(organization_id=organization_id, slug=wanted)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ServiceError({"name": "This organisation already has a cloud account with this name."})


# --- accounts -----------------------------------------------------------------------------------------------------
def cloud_account_create(
    *,
    actor: User,
    organization: Organization,
    name: str,
    kind: str,
    credentials: dict[str, str],
    endpoint: str = "",
    regions: list[str] | None = None,
    default_region: str = "",
    options: dict[str, Any] | None = None,
) -> CloudAccount:
    """Check everything (the provider last), then store. A refused check stores nothing."""
    require(actor, "clouds.manage", organization)
    spec = provider_spec(kind)
    name = (name or "").strip()
    if not name:
        raise ServiceError({"name": "Give the account a name."})
    slug = slugify(name)[:50]
    if not slug:
        raise ServiceError({"name": "Use letters or digits in the name."})
    _unique_slug(organization.pk, slug)
    creds = _clean_credentials(spec, credentials)
    region_list, default = _clean_regions(regions, default_region)
    opts = _clean_options(spec, options)
    endpoint = _clean_endpoint(spec, endpoint)
    _check_with_provider(
        spec, credentials=creds, endpoint=endpoint, regions=region_list, default_region=default, options=opts
    )
    with transaction.atomic():
        _unique_slug(organization.pk, slug)
        account = CloudAccount(
            organization=organization, name=name[:100], slug=slug, kind=kind, endpoint=endpoint,
            regions=region_list, default_region=default, options=opts, created_by=actor,
            health=Health.OK, last_success_at=timezone.now(),
        )
        account.set_credentials(creds, secret_field=spec.secret_field)
        try:
            with transaction.atomic():  # a savepoint: a concurrent create with the same name loses cleanly
                account.save()
        except IntegrityError:
            raise ServiceError({"name": "An account with this name was just created: choose another name."}) from None
        audit.record(
            actor=actor, verb="cloud_account.create", obj=account,
            after={**audit.snapshot(account, ACCOUNT_FIELDS), "fingerprint": account.credentials_fingerprint},
        )
    return account


def cloud_account_update(
    *,
    actor: User,
    account: CloudAccount,
    name: str | None = None,
    regions: list[str] | None = None,
    default_region: str | None = None,
    options: dict[str, Any] | None = None,
    endpoint: str | None = None,
    credentials: dict[str, str] | None = None,
) -> CloudAccount:
    """Change what the account is called, where it is used and how it is reached. A new endpoint needs the
    credentials entered again: otherwise an editor could send the stored secret to a host of their choosing."""
    require(actor, "clouds.manage", account)
    spec = provider_spec(account.kind)
    new_name = account.name if name is None else name.strip()
    if not new_name:
        raise ServiceError({"name": "Give the account a name."})
    slug = slugify(new_name)[:50] or account.slug
    if slug != account.slug:
        _unique_slug(account.organization_id, slug, exclude_pk=account.pk)
    region_list, default = _clean_regions(
        account.regions if regions is None else regions,
        (default_region if default_region is not None else ("" if regions is not None else account.default_region)),
    )
    opts = account.options if options is None else _clean_options(spec, options)
    new_endpoint = account.endpoint if endpoint is None else _clean_endpoint(spec, endpoint)
    endpoint_changed = new_endpoint != account.endpoint
    creds: dict[str, str] | None = None
    # a different provider or driver arguments could send the stored secret elsewhere, like a new endpoint
    steering_changed = any(opts.get(k) != account.options.get(k) for k in ("provider", "driver_kwargs"))
    if credentials:
        creds = _clean_credentials(spec, credentials)
    elif steering_changed:
        raise ServiceError(
            {"credentials": "Changing the provider or its driver arguments needs the credentials entered again."}
        )
    elif endpoint_changed:
        raise ServiceError(
            {"credentials": "Changing the endpoint needs the credentials entered again (the stored secret is never "
             "sent to a new host)."}
        )
    if creds is not None or endpoint_changed or region_list != account.regions or opts != account.options:
        _check_with_provider(
            spec, credentials=creds if creds is not None else account.get_credentials(), endpoint=new_endpoint,
            regions=region_list, default_region=default, options=opts,
        )
    with transaction.atomic():
        account = CloudAccount.objects.all_tenants().select_for_update().get(pk=account.pk)
        before = {**audit.snapshot(account, ACCOUNT_FIELDS), "fingerprint": account.credentials_fingerprint}
        account.name, account.slug, account.regions, account.default_region = new_name[:100], slug, region_list, default
        account.options, account.endpoint = opts, new_endpoint
        if creds is not None:
            account.set_credentials(creds, secret_field=spec.secret_field)
        account.save()
        audit.record(
            actor=actor, verb="cloud_account.update", obj=account, before=before,
            after={**audit.snapshot(account, ACCOUNT_FIELDS), "fingerprint": account.credentials_fingerprint},
        )
    return account


def cloud_account_rotate_credentials(
    *, actor: User, account: CloudAccount, credentials: dict[str, str]
) -> CloudAccount:
    """Replace the provider secret (checked against the provider first). Audited with fingerprints only."""
    require(actor, "clouds.manage", account)
    spec = provider_spec(account.kind)
    creds = _clean_credentials(spec, credentials)
    _check_with_provider(
        spec, credentials=creds, endpoint=account.endpoint, regions=account.regions,
        default_region=account.default_region, options=account.options,
    )
    with transaction.atomic():
        account = CloudAccount.objects.all_tenants().select_for_update().get(pk=account.pk)
        before = {"fingerprint": account.credentials_fingerprint, "hint": account.credentials_hint}
        account.set_credentials(creds, secret_field=spec.secret_field)
        account.health, account.health_message, account.last_success_at = Health.OK, "", timezone.now()
        account.save()
        audit.record(
            actor=actor, verb="cloud_account.rotate_credentials", obj=account, before=before,
            after={"fingerprint": account.credentials_fingerprint, "hint": account.credentials_hint},
        )
    return account


@transaction.atomic
def cloud_account_deactivate(*, actor: User, account: CloudAccount) -> CloudAccount:
    """No new launches or syncs; grants and synced data stay for the record and running servers keep running."""
    require(actor, "clouds.manage", account)
    account = CloudAccount.objects.all_tenants().select_for_update().get(pk=account.pk)
    if account.is_active:
        account.is_active = False
        account.save(update_fields=["is_active", "updated_at"])
        audit.record(
            actor=actor, verb="cloud_account.deactivate", obj=account, before={"is_active": True},
            after={"is_active": False},
        )
    return account


@transaction.atomic
def cloud_account_request_sync(*, actor: User, account: CloudAccount) -> CloudAccount:
    """"Sync now": audited, run by a worker once this transaction commits."""
    require(actor, "clouds.manage", account)
    if not account.is_active:
        raise ServiceError("This account is deactivated: it is not synced any more.")
    audit.record(actor=actor, verb="cloud_account.sync", obj=account)
    from apps.clouds.tasks import sync_account_task

    account_id = account.pk
    transaction.on_commit(lambda: sync_account_task.delay(account_id))
    return account


# --- grants -------------------------------------------------------------------------------------------------------
@transaction.atomic
def grant_create(
    *, actor: User, account: CloudAccount, project: Project, regions: Iterable[str] | None = None
) -> CloudGrant:
    """Delegate the account (or some of its regions) to a project; the project never sees the credentials."""
    require(actor, "grants.manage", account)
    if project.organization_id != account.organization_id:
        raise ServiceError({"project": "This project belongs to another organisation."})
    if not account.is_active:
        raise ServiceError({"account": "This account is deactivated: it cannot be granted."})
    if project.is_archived:
        raise ServiceError({"project": f"{project.name} is archived: it cannot be given cloud accounts."})
    region_list = list(dict.fromkeys(regions or []))
    outside = [r for r in region_list if r not in account.all_regions]
    if outside:
        raise ServiceError(
            {"regions": f"{account.name} is not used in {', '.join(outside)}: choose from "
             f"{', '.join(account.all_regions)}."}
        )
    live = CloudGrant.objects.all_tenants().select_for_update().filter(
        account=account, project=project, revoked_at__isnull=True
    )
    if live.exists():
        raise ServiceError({"project": f"{project.name} already has {account.name}: revoke that grant first."})
    try:
        with transaction.atomic():  # a savepoint: two grants racing for the same project, one wins
            grant = CloudGrant.objects.create(
                organization_id=account.organization_id, account=account, project=project, regions=region_list,
                granted_by=actor,
            )
    except IntegrityError:
        message = f"{project.name} already has {account.name}: revoke that grant first."
        raise ServiceError({"project": message}) from None
    audit.record(
        actor=actor, verb="cloud_grant.create", obj=grant, project_id=project.pk,
        after={"account": account.name, "project": project.name, "regions": region_list or "all"},
    )
    return grant


@transaction.atomic
def grant_revoke(*, actor: User, grant: CloudGrant) -> CloudGrant:
    """Stops new launches at once (can_launch reads live grants only); running servers keep running."""
    require(actor, "grants.manage", grant)
    grant = CloudGrant.objects.all_tenants().select_for_update().select_related("account", "project").get(pk=grant.pk)
    if grant.revoked_at is not None:
        raise ServiceError("This grant is already revoked.")
    grant.revoked_at, grant.revoked_by = timezone.now(), actor
    grant.save(update_fields=["revoked_at", "revoked_by"])
    audit.record(
        actor=actor, verb="cloud_grant.revoke", obj=grant, project_id=grant.project_id,
        before={"account": grant.account.name, "project": grant.project.name, "regions": grant.regions or "all"},
    )
    return grant


# --- prices -------------------------------------------------------------------------------------------------------
@transaction.atomic
def flavor_set_price(*, actor: User, flavor: Flavor, price_per_hour: Decimal | str | None) -> Flavor:
    """A sysadmin's price for a flavor, overriding the provider's (None: use the provider's again)."""
    require(actor, "clouds.manage", flavor)
    if price_per_hour in ("", None):
        price = None
    else:
        try:
            price = Decimal(str(price_per_hour))
        except InvalidOperation:
            raise ServiceError({"price_per_hour": "Give a price such as 0.0416."}) from None
        if not price.is_finite() or price < 0 or price >= Decimal("100000"):
            raise ServiceError({"price_per_hour": "The price per hour is between 0 and 99999."})
        price = price.quantize(Decimal("0.00001"))
    flavor = Flavor.objects.all_tenants().select_for_update().get(pk=flavor.pk)
    old = flavor.price_override_per_hour
    before = {"price_override_per_hour": None if old is None else str(old)}
    flavor.price_override_per_hour = price
    flavor.save(update_fields=["price_override_per_hour"])
    audit.record(
        actor=actor, verb="flavor.price_override", obj=flavor, before=before,
        after={"price_override_per_hour": None if price is None else str(price)},
        extra={"account": flavor.account_id, "region": flavor.region},
    )
    return flavor


# --- sync ---------------------------------------------------------------------------------------------------------
@dataclass
class RegionCatalogue:
    region: str
    sizes: list[base.Size]
    images: list[base.Image]
    networks: list[base.Network]


@dataclass
class SyncResult:
    ok: bool
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def _fetch(account: CloudAccount, region: str) -> RegionCatalogue:
    driver = drivers.driver_for(account, region)
    owners = tuple(account.options.get("image_owners") or ())
    patterns = tuple(account.options.get("image_name_patterns") or ())
    images = driver.list_images(owners=owners, name_patterns=patterns)
    if len(images) > MAX_IMAGES_PER_REGION:
        log.warning(
            "account %s region %s: %d images after filtering, keeping %d (narrow image_owners/image_name_patterns)",
            account.pk, region, len(images), MAX_IMAGES_PER_REGION,
        )
        images = images[:MAX_IMAGES_PER_REGION]
    return RegionCatalogue(region, driver.list_sizes(), images, driver.list_networks())


def _upsert(model: Any, account: CloudAccount, region: str, items: dict[str, dict[str, Any]], now: Any) -> int:
    """Create or update the rows of one kind for one account-region; rows the provider dropped become inactive."""
    existing = {
        row.provider_id: row
        for row in model.objects.all_tenants().filter(account_id=account.pk, region=region)
    }
    new, changed = [], []
    for provider_id, values in items.items():
        row = existing.get(provider_id)
        if row is None:
            new.append(model(
                organization_id=account.organization_id, account_id=account.pk, region=region,
                provider_id=provider_id, synced_at=now, is_active=True, **values,
            ))
            continue
        for name, value in values.items():
            setattr(row, name, value)
        row.is_active, row.synced_at = True, now
        changed.append(row)
    gone = [pid for pid in existing if pid not in items]
    if new:
        model.objects.all_tenants().bulk_create(new)
    if changed:
        fields = sorted({*next(iter(items.values())).keys(), "is_active", "synced_at"})
        model.objects.all_tenants().bulk_update(changed, fields, batch_size=500)
    if gone:
        model.objects.all_tenants().filter(account_id=account.pk, region=region, provider_id__in=gone).update(
            is_active=False
        )
    return len(items)


def _flavor_values(s: base.Size) -> dict[str, Any]:
    return {
        "name": s.name[:255], "vcpus": max(s.vcpus, 0), "ram_mb": max(s.ram_mb, 0), "disk_gb": max(s.disk_gb, 0),
        "arch": s.arch[:16], "gpus": max(s.gpus, 0), "provider_price_per_hour": s.price_per_hour,
    }


def _image_values(i: base.Image) -> dict[str, Any]:
    return {
        "name": (i.name or i.id)[:255], "os": i.os[:100], "arch": i.arch[:16], "owner": i.owner[:100],
        "is_public": i.is_public, "status": i.status[:32], "min_disk_gb": max(i.min_disk_gb, 0),
        "disk_format": i.disk_format[:16],
    }


def _network_values(n: base.Network) -> dict[str, Any]:
    return {"name": (n.name or n.id)[:255], "cidr": n.cidr[:64], "is_external": n.is_external}


def sync_account(*, account: CloudAccount, regions: list[str] | None = None) -> SyncResult:
    """Mirror flavors, images and networks of every region of the account. Provider calls first, no transaction
    open; then one transaction writes everything. On failure the last good data stays and the account says why."""
    account = CloudAccount.objects.all_tenants().get(pk=account.pk)
    if not account.is_active:
        return SyncResult(ok=False, message="deactivated")
    wanted = regions or account.all_regions
    catalogues: list[RegionCatalogue] = []
    try:
        for region in wanted:
            catalogues.append(_fetch(account, region))
    except base.CloudError as e:
        credentials = account.get_credentials()
        message = _redact(e.message, credentials)
        del credentials
        return _sync_failed(account, message, failing=isinstance(e, base.AuthError))
    except Exception:
        log.exception("sync of cloud account %s failed unexpectedly", account.pk)
        return _sync_failed(account, "The sync failed unexpectedly; see the server log.", failing=False)
    now = timezone.now()
    counts = {"flavors": 0, "images": 0, "networks": 0}
    with transaction.atomic():
        for cat in catalogues:
            counts["flavors"] += _upsert(Flavor, account, cat.region, {s.id: _flavor_values(s) for s in cat.sizes}, now)
            counts["images"] += _upsert(
                CloudImage, account, cat.region, {i.id: _image_values(i) for i in cat.images}, now
            )
            counts["networks"] += _upsert(
                Network, account, cat.region, {n.id: _network_values(n) for n in cat.networks}, now
            )
        CloudAccount.objects.all_tenants().filter(pk=account.pk).update(
            health=Health.OK, health_message="", last_success_at=now, last_sync_at=now
        )
    return SyncResult(ok=True, counts=counts)


def _sync_failed(account: CloudAccount, message: str, *, failing: bool) -> SyncResult:
    now = timezone.now()
    health = Health.FAILING if failing else Health.DEGRADED
    text = f"Sync failed: {message}"[:500]
    with transaction.atomic():
        CloudAccount.objects.all_tenants().filter(pk=account.pk).update(
            health=health, health_message=text, last_failure_at=now
        )
    log.warning("sync of cloud account %s failed: %s", account.pk, message)
    return SyncResult(ok=False, message=text)

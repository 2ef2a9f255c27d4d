"""Driver registry: provider kind → driver class, imported lazily so that nothing loads libcloud or openstacksdk
until an account of that kind is used."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.conf import settings

from apps.clouds.drivers.base import CloudDriver, InvalidRequestError

if TYPE_CHECKING:
    from apps.clouds.models import CloudAccount

DRIVER_PATHS: dict[str, str] = {
    "sim": "apps.clouds.drivers.sim.SimDriver",
    "ec2": "apps.clouds.drivers.libcloud_driver.EC2Driver",
    "libcloud": "apps.clouds.drivers.libcloud_driver.LibcloudDriver",
    "openstack": "apps.clouds.drivers.openstack_driver.OpenStackDriver",
}


def enabled_kinds() -> list[str]:
    return [k for k in DRIVER_PATHS if k != "sim" or settings.SKYPORT_ENABLE_SIM]


def driver_class(kind: str) -> type[CloudDriver]:
    if kind not in enabled_kinds():
        choices = ", ".join(enabled_kinds())
        raise InvalidRequestError(f"Unknown or disabled cloud type {kind!r}: choose one of {choices}.")
    module, _, name = DRIVER_PATHS[kind].rpartition(".")
    return getattr(import_module(module), name)


def build_driver(
    kind: str, *, credentials: dict[str, str], region: str | None, endpoint: str | None, options: dict[str, Any]
) -> CloudDriver:
    return driver_class(kind)(credentials=credentials, region=region, endpoint=endpoint, options=options)


def driver_for(account: CloudAccount, region: str | None = None) -> CloudDriver:
    return build_driver(
        account.kind,
        credentials=account.get_credentials(),
        region=region or account.default_region,
        endpoint=account.endpoint or None,
        options=account.options,
    )

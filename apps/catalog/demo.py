"""Demo catalog for Acme: two approved images copied to every region of both Acme sim accounts, profiles
small/medium/large, a two-tier web blueprint (2 web spread across accounts + 1 db) and catalog items published to
`web` and `data`. Idempotent: what exists is left as it is."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from django.utils.text import slugify

from apps.accounts.models import Organization, Project, User
from apps.catalog import blueprints, catalog, images, profiles
from apps.catalog.models import Blueprint, CatalogItem, HardwareProfile, Image
from apps.clouds.models import CloudAccount

PROFILES = [("small", 1, 2048, 20), ("medium", 2, 4096, 40), ("large", 4, 8192, 80)]
IMAGES = [
    ("Debian", "12", "Debian", "12", "Debian 12 (bookworm), cloud-init enabled, minimal install.", "64M"),
    ("Ubuntu", "24.04", "Ubuntu", "24.04", "Ubuntu 24.04 LTS server, cloud-init enabled.", "80M"),
]
TWO_TIER = """\
version: 1
description: Two-tier web application - web servers spread across clouds, one database.
parameters:
  web_count: {type: integer, default: 2, min: 1, max: 8, description: Number of web servers}
  admin_email: {type: string, default: ops@acme.example, description: Who receives the server mail}
servers:
  web:
    image: Debian 12
    profile: small
    count: "{{ web_count }}"
    placement: {spread: accounts}
    ports: [80, 443]
    user_data: |
      #cloud-config
      packages: [nginx]
      write_files:
        - path: /etc/motd
          content: "web server - contact {{ admin_email }}"
        - path: /etc/app/database-host
          content: "{{ db.private_ip }}"
    depends_on: [db]
  db:
    image: Debian 12
    profile: medium
    count: 1
    ports: [{port: 5432, cidr: 10.0.0.0/8}]
    user_data: |
      #cloud-config
      packages: [postgresql]
"""


def _user(username: str) -> User:
    return User.objects.get(username=username)


def _demo_disk(directory: str, name: str, size: str) -> Path:
    """A small sparse qcow2 (tens of MiB virtual, a few hundred KiB on disk) standing in for a real OS image."""
    path = Path(directory) / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)  # noqa: S603, S607
    return path


def seed_catalog() -> dict[str, int]:
    acme = Organization.objects.all_tenants().get(slug="acme")
    web = Project.objects.all_tenants().get(organization=acme, slug="web")
    data = Project.objects.all_tenants().get(organization=acme, slug="data")
    dennis, sarah = _user("dennis"), _user("sarah")
    accounts = list(CloudAccount.objects.all_tenants().filter(organization=acme, kind="sim", is_active=True))

    for name, vcpus, ram_mb, disk_gb in PROFILES:
        if not HardwareProfile.objects.all_tenants().filter(organization=acme, slug=name).exists():
            profiles.profile_create(
                actor=dennis, organization=acme, name=name, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                description=f"{vcpus} vCPU, {ram_mb // 1024} GiB RAM, {disk_gb} GB disk",
            )

    with tempfile.TemporaryDirectory() as tmp:
        for name, version, os_name, os_version, description, size in IMAGES:
            image = Image.objects.all_tenants().filter(organization=acme, name=name, version=version).first()
            if image is None:
                path = _demo_disk(tmp, f"{name}-{version}".lower(), size)
                with path.open("rb") as fileobj:
                    image = images.image_import_upload(
                        actor=dennis, project=web, name=name, version=version, os=os_name, os_version=os_version,
                        description=description, fileobj=fileobj, filename=path.name,
                    )
            if not image.is_approved:
                image = images.image_approve(actor=sarah, image=image, note="Demo base image, reviewed.")
            if not image.shares.filter(project=data).exists():
                images.image_share(actor=dennis, image=image, project=data)
            have = set(image.copies.values_list("account_id", "region"))
            targets = [(a, region) for a in accounts for region in a.all_regions if (a.pk, region) not in have]
            if targets:
                images.image_push(actor=dennis, image=image, targets=targets)

    debian = Image.objects.all_tenants().get(organization=acme, name="Debian", version="12")
    ubuntu = Image.objects.all_tenants().get(organization=acme, name="Ubuntu", version="24.04")
    small = HardwareProfile.objects.all_tenants().get(organization=acme, slug="small")
    medium = HardwareProfile.objects.all_tenants().get(organization=acme, slug="medium")

    blueprint = Blueprint.objects.all_tenants().filter(organization=acme, slug="two-tier-web").first()
    if blueprint is None:
        blueprint = blueprints.blueprint_create(
            actor=dennis, project=web, name="Two-tier web", source=TWO_TIER,
            description="Web servers behind your load balancer, spread across clouds, and a PostgreSQL server.",
            note="First version",
        )
    latest = blueprint.versions.order_by("-number").first()

    items = [
        ("Debian 12 server", "A small Debian 12 server for everyday work.", "terminal",
         dict(kind=CatalogItem.Kind.IMAGE, image=debian, profile=small), [web, data]),
        ("Ubuntu 24.04 server", "A medium Ubuntu server for builds and services.", "server",
         dict(kind=CatalogItem.Kind.IMAGE, image=ubuntu, profile=medium), [data]),
        ("Two-tier web application", "Web servers spread across clouds plus a database.",
         "layers", dict(kind=CatalogItem.Kind.BLUEPRINT, blueprint_version=latest), [web]),
    ]
    for name, summary, icon, kind_fields, projects in items:
        if CatalogItem.objects.all_tenants().filter(organization=acme, slug=slugify(name)).exists():
            continue
        catalog.catalog_item_create(
            actor=dennis, project=web, name=name, summary=summary, icon=icon, publish_to=projects,
            description=summary, **kind_fields,
        )
    return {
        "images": Image.objects.all_tenants().filter(organization=acme).count(),
        "profiles": HardwareProfile.objects.all_tenants().filter(organization=acme).count(),
        "items": CatalogItem.objects.all_tenants().filter(organization=acme).count(),
    }

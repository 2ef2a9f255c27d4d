"""Catalog rows for the generated isolation walk (tests/test_route_walk.py), and the catalog routes it walks.

Routes are plain keyword dicts for `Route(...)`: API routes in walk_api.py, page routes in walk_pages.py.
"""

from __future__ import annotations

from typing import Any

from apps.accounts.models import Organization, Project
from apps.catalog.models import (
    Blueprint,
    BlueprintVersion,
    CatalogItem,
    CatalogPublication,
    HardwareProfile,
    Image,
    ImageCopy,
    ImageShare,
)

CATALOG_MODELS = (Image, ImageCopy, ImageShare, HardwareProfile, Blueprint, BlueprintVersion, CatalogItem,
                  CatalogPublication)


def catalog_world(mark: str, acme: Organization, web: Project, data: Project, account: Any) -> dict[str, Any]:
    """Acme catalog rows carrying the marker (rows only: the walk never reaches a provider)."""
    image = Image.objects.create(
        organization=acme, project=web, name=f"{mark} image", version="1", os="Debian", source=Image.Source.UPLOAD,
        state=Image.State.READY, disk_format="qcow2", approval=Image.Approval.APPROVED,
    )
    copy = ImageCopy.objects.create(
        organization=acme, image=image, account=account, region="region-1", disk_format="qcow2",
        provider_image_id=f"{mark}-img", state=ImageCopy.State.FAILED, error=f"{mark} failed",
    )
    share = ImageShare.objects.create(organization=acme, image=image, project=data)
    profile = HardwareProfile.objects.create(organization=acme, name=f"{mark} profile", slug="acmemark-profile",
                                             vcpus=1, ram_mb=1024)
    blueprint = Blueprint.objects.create(organization=acme, project=web, name=f"{mark} blueprint",
                                         slug="acmemark-blueprint", latest_version=1)
    version = BlueprintVersion.objects.create(
        organization=acme, blueprint=blueprint, number=1, source=f"# {mark}\n", spec={"servers": {}}, note=mark,
    )
    item = CatalogItem.objects.create(
        organization=acme, project=web, name=f"{mark} item", slug="acmemark-item", kind=CatalogItem.Kind.IMAGE,
        image=image, profile=profile, summary=mark,
    )
    publication = CatalogPublication.objects.create(organization=acme, item=item, project=web)
    return {
        "image": image,
        "image_copy": copy,
        "image_share": share,
        "hardware_profile": profile,
        "blueprint": blueprint,
        "blueprint_version": version,
        "catalog_item": item,
        "catalog_publication": publication,
    }


def catalog_routes() -> dict[str, dict[str, Any]]:
    routes: dict[str, dict[str, Any]] = {}
    for module in ("tests.catalog.walk_api", "tests.catalog.walk_pages"):
        try:
            mod = __import__(module, fromlist=["ROUTES"])
        except ModuleNotFoundError:
            continue
        routes.update(mod.ROUTES)
    return routes

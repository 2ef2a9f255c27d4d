"""A catalog for the page tests: a priced simulated cloud granted to web, approved and pending images with copies,
profiles, a blueprint with two versions and catalog items (one published to web, one unpublished, one disabled)."""

from __future__ import annotations

from typing import Any

from apps.catalog.blueprints import blueprint_create, blueprint_version_save
from apps.catalog.catalog import catalog_item_create, catalog_item_set_enabled
from apps.catalog.models import Image, ImageCopy
from apps.clouds.models import CloudGrant
from tests.catalog.test_blueprints import EXAMPLE
from tests.catalog.test_profiles import make_account, make_flavor, make_image, make_profile


def grow_images(acme: Any, web: Any, account: Any, n: int, start: int = 0) -> None:
    """n more images, each with two copies (one failed)."""
    for i in range(start, start + n):
        image = make_image(web, f"Image {i}", "1", approval=Image.Approval.PENDING if i % 2 else
                           Image.Approval.APPROVED)
        ImageCopy.objects.create(organization=acme, image=image, account=account, region="region-1",
                                 state=ImageCopy.State.AVAILABLE, progress=100)
        ImageCopy.objects.create(organization=acme, image=image, account=account, region="region-2",
                                 state=ImageCopy.State.FAILED, error="quota exceeded")


def build_world(acme: Any, web: Any, dennis: Any) -> dict[str, Any]:
    account = make_account(acme, "sim-a", regions=["region-1", "region-2"])
    CloudGrant.objects.create(organization=acme, account=account, project=web)
    small_flavor = make_flavor(account, "s1", 1, 2048, price="0.010")
    make_flavor(account, "m2", 2, 4096, price="0.020")
    make_flavor(account, "s1b", 1, 2048, region="region-2", price="0.012")
    debian = make_image(web, "Debian", "12", os="Debian", checksum_sha256="ab" * 32, size_bytes=2 * 1024 ** 2)
    pending = make_image(web, "Ubuntu", "24.04", approval=Image.Approval.PENDING, created_by=dennis)
    available = ImageCopy.objects.create(organization=acme, image=debian, account=account, region="region-1",
                                         state=ImageCopy.State.AVAILABLE, progress=100, provider_image_id="img-1")
    failed = ImageCopy.objects.create(organization=acme, image=debian, account=account, region="region-2",
                                      state=ImageCopy.State.FAILED, error="the upload timed out", attempts=1)
    small = make_profile(acme, "Small", 1, 2048)
    medium = make_profile(acme, "Medium", 2, 4096)
    huge = make_profile(acme, "Huge", 64, 512 * 1024)
    blueprint = blueprint_create(actor=dennis, project=web, name="Two tier", source=EXAMPLE, note="first")
    v2 = blueprint_version_save(actor=dennis, blueprint=blueprint, source=EXAMPLE.replace("max: 10", "max: 12"),
                                note="more web servers")
    for_web = catalog_item_create(actor=dennis, project=web, name="Debian small", kind="image", image=debian,
                                  profile=small, summary="Everyday Debian", publish_to=[web],
                                  approval_threshold_monthly="50")
    unpublished = catalog_item_create(actor=dennis, project=web, name="Debian medium", kind="image", image=debian,
                                   profile=medium, summary="Not published yet", publish_to=[])
    disabled = catalog_item_create(actor=dennis, project=web, name="Old Debian", kind="image", image=debian,
                                   profile=small, summary="Retired", publish_to=[web])
    catalog_item_set_enabled(actor=dennis, item=disabled, enabled=False)
    return {
        "account": account, "flavor": small_flavor, "debian": debian, "pending": pending, "available": available,
        "failed": failed, "small": small, "medium": medium, "huge": huge, "blueprint": blueprint, "v2": v2,
        "for_web": for_web, "unpublished": unpublished, "disabled": disabled,
    }

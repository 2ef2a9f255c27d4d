"""The demo catalog: what `make demo` shows designers, security admins and consumers, seeded twice safely."""

from __future__ import annotations

import pytest
from django.db.models import Count

from apps.catalog import catalog as catalog_services
from apps.catalog.demo import seed_catalog
from apps.catalog.models import Blueprint, CatalogItem, HardwareProfile, Image, ImageCopy
from apps.clouds.demo import seed_clouds
from apps.core.models import AuditEvent
from tests.catalog.conftest import stored_files
from tests.clouds.fixtures_sim import SIM_DATABASES

pytestmark = pytest.mark.django_db(databases=SIM_DATABASES)


def test_demo_catalog_is_complete_and_seeding_again_changes_nothing(
    personas, acme, globex, web, data, connor, image_store_dir, django_capture_on_commit_callbacks
):
    accounts = seed_clouds()
    with django_capture_on_commit_callbacks(execute=True):  # the pushes run once the seed's writes commit
        counts = seed_catalog()
    assert counts == {"images": 2, "profiles": 3, "items": 3}

    images = Image.objects.all_tenants().filter(organization=acme)
    assert {(i.name, i.version, i.state, i.approval) for i in images} == {
        ("Debian", "12", "ready", "approved"), ("Ubuntu", "24.04", "ready", "approved")}
    # every image copied to every region of both Acme sim accounts, with a provider id each
    acme_regions = {(accounts[n].pk, r) for n in ("sim-east", "sim-west") for r in accounts[n].all_regions}
    for image in images:
        copies = ImageCopy.objects.all_tenants().filter(image=image)
        assert {(c.account_id, c.region) for c in copies} == acme_regions
        assert {c.state for c in copies} == {"available"} and all(c.provider_image_id for c in copies)
        assert {s.project.slug for s in image.shares.all()} == {"data"}
    assert len(stored_files(image_store_dir)) >= 2  # the master files

    profiles = HardwareProfile.objects.all_tenants().filter(organization=acme)
    assert [(p.slug, p.vcpus, p.ram_mb) for p in profiles] == [
        ("small", 1, 2048), ("medium", 2, 4096), ("large", 4, 8192)]
    blueprint = Blueprint.objects.all_tenants().get(organization=acme, slug="two-tier-web")
    spec = blueprint.versions.get(number=1).spec
    assert spec["servers"]["web"]["placement"]["spread"] == "accounts" and set(spec["servers"]) == {"web", "db"}

    items = CatalogItem.objects.all_tenants().filter(organization=acme)
    published = {i.slug: sorted(p.project.slug for p in i.publications.all()) for i in items}
    assert published == {"debian-12-server": ["data", "web"], "ubuntu-2404-server": ["data"],
                         "two-tier-web-application": ["web"]}
    assert all(i.price_hourly_min and i.price_hourly_max >= i.price_hourly_min for i in items)
    for item in items.filter(publications__project=web):
        assert catalog_services.catalog_item_launch_check(item, project=web) == []
    # connor (member of web) browses exactly the two items published to web
    assert {i.slug for i in catalog_services.catalog_for(connor, project=web)} == {
        "debian-12-server", "two-tier-web-application"}
    assert not Image.objects.all_tenants().filter(organization=globex).exists()

    def state():
        return (
            list(Image.objects.all_tenants().order_by("pk").values_list("pk", "approval", "updated_at")),
            list(ImageCopy.objects.all_tenants().order_by("pk").values_list("pk", "provider_image_id", "updated_at")),
            list(CatalogItem.objects.all_tenants().order_by("pk").values_list("pk", "updated_at")),
            list(Blueprint.objects.all_tenants().annotate(n=Count("versions")).values_list("pk", "n")),
            AuditEvent.objects.all_tenants().count(),
        )

    before = state()
    with django_capture_on_commit_callbacks(execute=True):
        assert seed_catalog() == counts
    assert state() == before

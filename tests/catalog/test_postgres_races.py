"""Catalog races that only a real server can show: concurrent pushes of one image and concurrent saves of one
blueprint, each thread on its own connection, released together."""

from __future__ import annotations

import pytest
from django.db import connection, connections

from apps.catalog import blueprints, images
from apps.catalog.models import BlueprintVersion, ImageCopy
from apps.clouds import services as cloud_services
from apps.clouds.models import Operation
from apps.clouds.sim.models import SimCloud
from tests.catalog.conftest import connect, needs_qemu, upload
from tests.catalog.test_blueprints import EXAMPLE, catalog  # noqa: F401 (fixture)
from tests.clouds.accounts_world import DBS
from tests.postgres.test_concurrency import race

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(databases=DBS, transaction=True),
    needs_qemu,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL: SQLite serialises every writer"),
]


def test_parallel_pushes_of_one_image_make_one_copy_and_one_provider_image_per_target(sam, dennis, acme, web, disk):
    east, west = connect(sam, acme, "race-east"), connect(sam, acme, "race-west")
    for account in (east, west):
        cloud_services.grant_create(actor=sam, account=account, project=web)
    image = upload(dennis, web, disk("qcow2", "16M"))
    targets = [(east, "region-1"), (west, "region-1")]

    def push(i: int) -> list[ImageCopy]:
        try:
            return images.image_push(actor=dennis, image=image, targets=targets)
        finally:
            connections["sim"].close()  # the thread's own connection to the sim cloud (race() closes the default)

    results, errors = race(6, push)
    assert not errors, errors
    copies = list(ImageCopy.objects.all_tenants().filter(image=image))
    assert sorted((c.account_id, c.region) for c in copies) == sorted((a.pk, r) for a, r in targets)
    for copy in copies:
        assert copy.state == ImageCopy.State.AVAILABLE and copy.attempts == 1, (copy.state, copy.error)
        pushes = Operation.objects.all_tenants().filter(kind="push_image", account=copy.account)
        assert pushes.count() == 1
        cloud = SimCloud.objects.get(endpoint=copy.account.endpoint)
        ours = [i for i in cloud.images if (i.get("tags") or {}).get("skyport:image") == str(image.pk)]
        assert [i["id"] for i in ours] == [copy.provider_image_id]


@pytest.mark.usefixtures("catalog")  # the image and profiles the blueprint names
def test_parallel_saves_of_one_blueprint_number_versions_without_gaps_or_twins(dennis, web):
    blueprint = blueprints.blueprint_create(actor=dennis, project=web, name="Raced", source=EXAMPLE)
    sources = [EXAMPLE.replace("Two-tier web application", f"Variant {i}") for i in range(6)]
    results, errors = race(6, lambda i: blueprints.blueprint_version_save(actor=dennis, blueprint=blueprint,
                                                                          source=sources[i]))
    assert not errors, errors
    numbers = sorted(BlueprintVersion.objects.all_tenants().filter(blueprint=blueprint).values_list("number",
                                                                                                  flat=True))
    assert numbers == list(range(1, 8))
    blueprint.refresh_from_db()
    assert blueprint.latest_version == 7

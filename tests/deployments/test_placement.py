"""Placement: candidates pass the access-review policy, have an approved copy of the image and a fitting flavor;
every other cloud is listed with its reason; the policies choose among the candidates."""

from __future__ import annotations

import pytest

from apps.catalog.models import Image, ImageCopy
from apps.clouds.models import CloudGrant
from apps.core.permissions import ServiceError
from apps.deployments.placement import fallbacks, place, placement_candidates
from tests.catalog.test_profiles import make_account, make_flavor, make_image, make_profile

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(acme, web):
    image = make_image(web, "Debian", "12")
    profile = make_profile(acme, "small", 1, 2048)
    accounts = {}
    for name, price, granted, copy in (("cheap", "0.010", True, True), ("dear", "0.030", True, True),
                                       ("nocopy", "0.005", True, False), ("ungranted", "0.001", False, True),
                                       ("tiny", None, True, True)):
        account = make_account(acme, name)
        if price:
            make_flavor(account, "s1", 1, 2048, price=price)
        else:
            make_flavor(account, "xs", 1, 512, price="0.001")  # too small for the profile
        if granted:
            CloudGrant.objects.create(organization=acme, account=account, project=web)
        if copy:
            ImageCopy.objects.create(organization=acme, image=image, account=account, region="region-1",
                                     state=ImageCopy.State.AVAILABLE, provider_image_id=f"img-{name}")
        accounts[name] = account
    return image, profile, accounts


def test_candidates_and_the_reason_for_every_other_cloud(connor, web, world):
    image, profile, accounts = world
    candidates, rejected = placement_candidates(user=connor, project=web, image=image, profile=profile)
    assert [(c.where, str(c.price_per_hour), c.provider_image_id) for c in candidates] == [
        ("cheap/region-1", "0.01000", "img-cheap"), ("dear/region-1", "0.03000", "img-dear")]
    reasons = {r.where: r.reason for r in rejected}
    assert set(reasons) == {"nocopy/region-1", "ungranted/region-1", "tiny/region-1"}
    assert "no approved copy of Debian 12" in reasons["nocopy/region-1"]
    assert "grant" in reasons["ungranted/region-1"].lower()
    assert "no flavor" in reasons["tiny/region-1"]


def test_a_viewer_gets_no_candidate_and_an_unapproved_image_is_refused(vera, connor, web, world):
    image, profile, _ = world
    candidates, rejected = placement_candidates(user=vera, project=web, image=image, profile=profile)
    assert candidates == [] and len(rejected) == 5
    Image.objects.all_tenants().filter(pk=image.pk).update(approval=Image.Approval.REVOKED)
    image.refresh_from_db()
    with pytest.raises(ServiceError, match="not approved"):
        placement_candidates(user=connor, project=web, image=image, profile=profile)


def test_policies(connor, web, world):
    image, profile, accounts = world
    candidates, _ = placement_candidates(user=connor, project=web, image=image, profile=profile)
    assert [c.where for c in place(candidates, count=2, policy="cheapest")] == ["cheap/region-1"] * 2
    assert [c.where for c in place(candidates, count=3, policy="spread")] == [
        "cheap/region-1", "dear/region-1", "cheap/region-1"]
    chosen = place(candidates, count=1, policy="account", account_id=accounts["dear"].pk)
    assert [c.where for c in chosen] == ["dear/region-1"]
    [first] = place(candidates, count=1, policy="ordered")
    assert [c.where for c in fallbacks(candidates, first)] == ["dear/region-1"]
    with pytest.raises(ServiceError, match="This cloud account cannot take"):
        place(candidates, count=1, policy="account", account_id=accounts["nocopy"].pk)
    with pytest.raises(ServiceError, match="No cloud can take"):
        place([], count=1, policy="cheapest")

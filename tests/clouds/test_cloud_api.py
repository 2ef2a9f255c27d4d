"""The clouds API: write-only credentials, structured 400s that store nothing, isolation, constant query counts."""

from __future__ import annotations

import pytest

from apps.clouds import services
from apps.clouds.models import CloudAccount, CloudGrant, Flavor
from apps.core.models import AuditEvent
from tests.clouds.accounts_world import DBS, connect, make_sim_cloud

pytestmark = pytest.mark.django_db(databases=DBS)


def _payload(acme, sim_endpoint, **extra):
    body = {"organization": acme.pk, "name": "api-cloud", "kind": "sim", "endpoint": sim_endpoint,
            "regions": ["region-1"], "credentials": {"api_key": "api-key-77778888"}}
    body.update(extra)
    return body


def test_create_never_returns_credentials(api, sam, acme):
    endpoint = make_sim_cloud(api_key="api-key-77778888", regions=["region-1"])
    response = api(sam).post("/api/v1/cloud-accounts/", _payload(acme, endpoint), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert "credentials" not in body and "credentials_encrypted" not in body
    assert body["credentials_hint"] == "8888" and len(body["credentials_fingerprint"]) == 16
    assert "api-key-7777" not in response.content.decode()
    listing = api(sam).get("/api/v1/cloud-accounts/").content.decode()
    assert "api-cloud" in listing and "api-key-7777" not in listing


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "azure-classic"}, "kind"),
        ({"regions": ["no such region!"]}, "regions"),
        ({"kind": "ec2", "endpoint": "https://169.254.169.254/",
          "credentials": {"access_key": "AKIAEXAMPLE", "secret_key": "s" * 40}}, "endpoint"),
        ({"credentials": {"api_key": "wrong-key-000000"}}, "credentials"),
        ({"color": "blue"}, "color"),
    ],
)
def test_bad_input_is_a_structured_400_and_nothing_is_stored(api, sam, acme, changes, field):
    endpoint = make_sim_cloud(api_key="api-key-77778888", regions=["region-1"])
    events = AuditEvent.objects.all_tenants().count()
    response = api(sam).post("/api/v1/cloud-accounts/", _payload(acme, endpoint, **changes), format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]
    assert "wrong-key" not in response.content.decode()
    assert not CloudAccount.objects.all_tenants().exists()
    assert AuditEvent.objects.all_tenants().count() == events


def test_unreachable_endpoint_is_a_400(api, sam, acme):
    response = api(sam).post("/api/v1/cloud-accounts/", _payload(acme, "sim://nobody-answers"), format="json")
    assert response.status_code == 400
    assert "No simulated cloud answers" in response.json()["error"]["message"]
    assert not CloudAccount.objects.all_tenants().exists()


def test_patch_endpoint_without_secret_is_refused(api, sam, acme):
    account = connect(sam, acme, "patchy")
    other = make_sim_cloud()
    response = api(sam).patch(f"/api/v1/cloud-accounts/{account.pk}/", {"endpoint": other}, format="json")
    assert response.status_code == 400 and "credentials" in response.json()["error"]["fields"]
    account.refresh_from_db()
    assert account.endpoint != other


def test_sync_health_rotate_and_delete(api, sam, acme, django_capture_on_commit_callbacks):
    account = connect(sam, acme, "acts")
    client = api(sam)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/cloud-accounts/{account.pk}/sync/")
    assert response.status_code == 202
    assert Flavor.objects.all_tenants().filter(account=account).count() == 8
    health = client.get(f"/api/v1/cloud-accounts/{account.pk}/health/").json()
    assert health["health"] == "ok" and health["synced_seconds_ago"] is not None
    response = client.post(f"/api/v1/cloud-accounts/{account.pk}/rotate-credentials/",
                           {"credentials": {"api_key": "not-the-key-1234"}}, format="json")
    assert response.status_code == 400 and "not-the-key" not in response.content.decode()
    assert client.delete(f"/api/v1/cloud-accounts/{account.pk}/").status_code == 204
    account.refresh_from_db()
    assert not account.is_active


def test_roles(api, marty, connor, sarah, acme, web, east):
    assert api(marty).get(f"/api/v1/cloud-accounts/{east.pk}/").status_code == 200
    assert api(marty).delete(f"/api/v1/cloud-accounts/{east.pk}/").status_code == 403
    assert api(connor).get(f"/api/v1/cloud-accounts/{east.pk}/").status_code == 404
    response = api(sarah).post("/api/v1/cloud-grants/", {"account": east.pk, "project": web.pk}, format="json")
    assert response.status_code == 201, response.content
    assert api(marty).delete(f"/api/v1/cloud-grants/{response.json()['id']}/").status_code == 403
    assert api(sarah).delete(f"/api/v1/cloud-grants/{response.json()['id']}/").status_code == 204
    assert CloudGrant.objects.all_tenants().get(pk=response.json()["id"]).revoked_at is not None


def test_globex_sees_and_uses_nothing_of_acme(api, sam, web, mallory, ops, east):
    services.grant_create(actor=sam, account=east, project=web)
    flavor = Flavor.objects.all_tenants().filter(account=east).first()
    grant = CloudGrant.objects.all_tenants().get(account=east)
    client = api(mallory)
    for url in (f"/api/v1/cloud-accounts/{east.pk}/", f"/api/v1/cloud-accounts/{east.pk}/health/",
                f"/api/v1/flavors/{flavor.pk}/", f"/api/v1/cloud-grants/{grant.pk}/"):
        assert client.get(url).status_code == 404
    for path in ("cloud-accounts", "cloud-grants", "flavors", "cloud-images", "networks"):
        assert client.get(f"/api/v1/{path}/").json()["count"] == 0
    response = client.post("/api/v1/cloud-grants/", {"account": east.pk, "project": ops.pk}, format="json")
    assert response.status_code == 400
    assert CloudGrant.objects.all_tenants().filter(account=east).count() == 1


def test_flavor_price_override(api, sam, marty, east):
    flavor = Flavor.objects.all_tenants().filter(account=east).first()
    url = f"/api/v1/flavors/{flavor.pk}/"
    assert api(marty).patch(url, {"price_override_per_hour": "1.5"}, format="json").status_code == 403
    response = api(sam).patch(url, {"price_override_per_hour": "1.5"}, format="json")
    assert response.status_code == 200 and response.json()["price_per_hour"] == "1.50000"
    assert api(sam).patch(url, {"vcpus": 64}, format="json").status_code == 400


@pytest.mark.parametrize("path", ["cloud-accounts", "cloud-grants", "flavors", "cloud-images", "networks"])
def test_list_query_counts_do_not_grow(api, sam, acme, web, path, django_assert_max_num_queries):
    def grow(n):
        for _ in range(n):
            account = connect(sam, acme, f"acct-{CloudAccount.objects.all_tenants().count()}")
            services.sync_account(account=account)
            services.grant_create(actor=sam, account=account, project=web)

    client = api(sam)
    grow(1)
    client.get(f"/api/v1/{path}/")
    with django_assert_max_num_queries(12) as small:
        client.get(f"/api/v1/{path}/")
    grow(4)
    with django_assert_max_num_queries(len(small.captured_queries)):
        response = client.get(f"/api/v1/{path}/")
    assert response.json()["count"] >= 5

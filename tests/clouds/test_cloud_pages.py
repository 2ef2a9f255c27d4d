"""Cloud pages: list with health and counts, add with the provider check, detail, sync now, grants, access review
and its audited CSV export; isolation; constant query counts."""

from __future__ import annotations

import pytest

from apps.clouds import services
from apps.clouds.models import CloudAccount, CloudGrant
from apps.core.models import AuditEvent
from tests.clouds.accounts_world import DBS, connect, make_sim_cloud

pytestmark = pytest.mark.django_db(databases=DBS)


def test_add_account_page_checks_then_stores(client, sam, acme, django_capture_on_commit_callbacks):
    endpoint = make_sim_cloud(api_key="page-key-12345678", regions=["region-1"])
    client.force_login(sam)
    page = client.get("/clouds/add/?kind=sim")
    assert page.status_code == 200 and 'type="password"' in page.content.decode()
    bad = client.post("/clouds/add/", {"kind": "sim", "name": "paged", "endpoint": endpoint, "regions": "region-1",
                                       "cred_api_key": "wrong-key-999999"})
    assert bad.status_code == 400
    text = bad.content.decode()
    assert "rejected the API key" in text and "wrong-key" not in text
    assert not CloudAccount.objects.all_tenants().exists()
    with django_capture_on_commit_callbacks(execute=True):
        ok = client.post("/clouds/add/", {"kind": "sim", "name": "paged", "endpoint": endpoint,
                                          "regions": "region-1", "cred_api_key": "page-key-12345678"})
    assert ok.status_code == 302
    account = CloudAccount.objects.all_tenants().get(name="paged")
    detail = client.get(f"/clouds/{account.pk}/").content.decode()
    assert "small" in detail and "synced" in detail and "page-key" not in detail
    listing = client.get("/clouds/").content.decode()
    assert "paged" in listing and "synced" in listing


def test_sync_now_and_deactivate_buttons(client, sam, east, django_capture_on_commit_callbacks):
    client.force_login(sam)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/clouds/{east.pk}/sync/").status_code == 302
    assert AuditEvent.objects.all_tenants().filter(verb="cloud_account.sync").count() == 1
    assert client.post(f"/clouds/{east.pk}/deactivate/").status_code == 302
    east.refresh_from_db()
    assert not east.is_active


def test_edit_endpoint_without_secret_shows_the_reason(client, sam, east):
    client.force_login(sam)
    other = make_sim_cloud()
    response = client.post(f"/clouds/{east.pk}/edit/", {"name": "east", "regions": "region-1 region-2",
                                                         "endpoint": other})
    assert response.status_code == 400 and "entered again" in response.content.decode()
    east.refresh_from_db()
    assert east.endpoint != other


def test_grants_page_grant_and_revoke(client, sarah, east, web):
    client.force_login(sarah)
    assert client.post("/clouds/grants/", {"account": east.pk, "project": web.pk, "regions": ""}).status_code == 302
    grant = CloudGrant.objects.all_tenants().get(account=east, project=web)
    assert client.post(f"/clouds/grants/{grant.pk}/revoke/").status_code == 302
    grant.refresh_from_db()
    assert grant.revoked_at is not None


def test_access_review_page_and_audited_export(client, sarah, east_granted):
    client.force_login(sarah)
    page = client.get("/clouds/access-review/?user=connor").content.decode()
    assert "Connor" in page and "Vera" not in page
    response = client.get("/clouds/access-review/export.csv")
    body = b"".join(response.streaming_content).decode()
    assert body.startswith("account,provider,project,username")
    assert "connor" in body and "vera" not in body
    assert AuditEvent.objects.all_tenants().filter(verb="access_review.export").count() == 1


def test_who_sees_what(client, marty, connor, vera, mallory, east):
    for user, status in ((marty, 200), (connor, 404), (vera, 404), (mallory, 200)):
        client.force_login(user)
        assert client.get("/clouds/").status_code == status
    client.force_login(mallory)
    assert "east" not in client.get("/clouds/").content.decode()
    assert client.get(f"/clouds/{east.pk}/").status_code == 404
    assert client.get("/clouds/access-review/").status_code == 200
    client.force_login(marty)
    assert client.get("/clouds/access-review/").status_code == 404
    assert client.post(f"/clouds/{east.pk}/sync/").status_code == 403


def test_page_query_counts_do_not_grow(client, sam, sarah, acme, web, django_assert_max_num_queries):
    def grow(n):
        for _ in range(n):
            account = connect(sam, acme, f"pg-{CloudAccount.objects.all_tenants().count()}")
            services.sync_account(account=account)
            services.grant_create(actor=sam, account=account, project=web)

    grow(1)
    for user, url in ((sam, "/clouds/"), (sam, "/clouds/grants/"), (sarah, "/clouds/access-review/")):
        client.force_login(user)
        client.get(url)
        with django_assert_max_num_queries(40) as small:
            client.get(url)
        counts = len(small.captured_queries)
        grow(3)
        with django_assert_max_num_queries(counts):
            assert client.get(url).status_code == 200

"""The secret canary: cloud accounts created with recognisable secrets (through the API and the pages), then every
page, API response, export and log line reachable for them is searched. The secrets must appear nowhere."""

from __future__ import annotations

import logging
import secrets

import pytest

from apps.clouds.models import CloudAccount
from apps.core.models import AuditEvent
from tests.clouds.accounts_world import DBS, make_sim_cloud

pytestmark = pytest.mark.django_db(databases=DBS)


def _text(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def test_canary_secret_never_leaves(client, api, sam, sarah, acme, web, caplog, django_capture_on_commit_callbacks):
    caplog.set_level(logging.DEBUG)
    api_canary = "CANARY-" + secrets.token_hex(12)
    page_canary = "CANARY-" + secrets.token_hex(12)
    wrong_canary = "CANARY-" + secrets.token_hex(12)
    canaries = (api_canary, page_canary, wrong_canary)
    outputs: list[str] = []

    # through the API
    endpoint = make_sim_cloud(api_key=api_canary, regions=["region-1"])
    admin = api(sam)
    with django_capture_on_commit_callbacks(execute=True):
        created = admin.post("/api/v1/cloud-accounts/", {
            "organization": acme.pk, "name": "canary-api", "kind": "sim", "endpoint": endpoint,
            "regions": ["region-1"], "credentials": {"api_key": api_canary},
        }, format="json")
    assert created.status_code == 201, created.content
    account_id = created.json()["id"]
    outputs.append(_text(created))

    # through the pages (a wrong secret first: the error must not echo it)
    page_endpoint = make_sim_cloud(api_key=page_canary, regions=["region-1"])
    client.force_login(sam)
    form = {"kind": "sim", "name": "canary-page", "endpoint": page_endpoint, "regions": "region-1"}
    outputs.append(_text(client.post("/clouds/add/", {**form, "cred_api_key": wrong_canary})))
    with django_capture_on_commit_callbacks(execute=True):
        outputs.append(_text(client.post("/clouds/add/", {**form, "cred_api_key": page_canary}, follow=True)))
    page_account = CloudAccount.objects.all_tenants().get(name="canary-page")

    with django_capture_on_commit_callbacks(execute=True):
        outputs.append(_text(admin.post(f"/api/v1/cloud-accounts/{account_id}/sync/")))
        outputs.append(_text(client.post(f"/clouds/{page_account.pk}/sync/", follow=True)))
    # a failed rotation and a refused endpoint change answer errors: those must not carry secrets either
    outputs.append(_text(admin.post(f"/api/v1/cloud-accounts/{account_id}/rotate-credentials/",
                                    {"credentials": {"api_key": wrong_canary}}, format="json")))
    outputs.append(_text(client.post(f"/clouds/{page_account.pk}/rotate/", {"cred_api_key": wrong_canary})))
    outputs.append(_text(admin.patch(f"/api/v1/cloud-accounts/{account_id}/",
                                     {"endpoint": "sim://elsewhere", "credentials": {"api_key": wrong_canary}},
                                     format="json")))
    outputs.append(_text(admin.post("/api/v1/cloud-grants/", {"account": account_id, "project": web.pk},
                                    format="json")))

    for url in ("/api/v1/cloud-accounts/", f"/api/v1/cloud-accounts/{account_id}/",
                f"/api/v1/cloud-accounts/{account_id}/health/", f"/api/v1/cloud-accounts/{page_account.pk}/",
                "/api/v1/cloud-grants/", "/api/v1/flavors/", "/api/v1/cloud-images/", "/api/v1/networks/",
                "/api/v1/audit-events/", "/api/v1/audit-events/export/", "/api/v1/schema/"):
        response = admin.get(url)
        assert response.status_code == 200, (url, response.status_code)
        outputs.append(_text(response))
    for url in ("/clouds/", f"/clouds/{account_id}/", f"/clouds/{page_account.pk}/", "/clouds/grants/",
                "/clouds/add/?kind=sim", "/audit/", "/audit/export.csv"):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        outputs.append(_text(response))
    client.force_login(sarah)
    for url in ("/clouds/access-review/", "/clouds/access-review/export.csv", "/audit/export.csv"):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        outputs.append(_text(response))

    stored_audit = " ".join(str(e.changes) + e.object_label for e in AuditEvent.objects.all_tenants())
    logs = "\n".join(r.getMessage() + str(r.args) + str(getattr(r, "exc_text", "")) for r in caplog.records)
    haystacks = {"responses": "\n".join(outputs), "audit": stored_audit, "logs": logs + caplog.text}
    assert "canary-api" in haystacks["responses"] and "canary-page" in haystacks["responses"]  # we did look
    for where, text in haystacks.items():
        for canary in canaries:
            assert canary not in text, f"a secret leaked into {where}"
    # at rest it is encrypted, and only the last four characters are kept in clear
    account = CloudAccount.objects.all_tenants().get(pk=account_id)
    assert api_canary not in account.credentials_encrypted and account.credentials_hint == api_canary[-4:]


def test_hook_secret_never_leaves(client, api, sam, acme, caplog, settings, django_capture_on_commit_callbacks):
    """Launch hook secrets: created through the API and the pages, rotated, tested (a delivery that fails, and its
    error), then every hook page and API answer, the audit trail and the logs are searched."""
    from apps.deployments.models import Hook, HookDelivery

    caplog.set_level(logging.DEBUG)
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    api_canary, page_canary, rotated = ("CANARY-" + secrets.token_hex(12) for _ in range(3))
    outputs: list[str] = []
    admin = api(sam)
    url = "http://127.0.0.1:9/hook"  # discard port: nothing answers, so the test delivery fails with an error
    created = admin.post("/api/v1/hooks/", {"organization": acme.pk, "name": "canary-api-hook", "url": url,
                                           "phase": "after_launch", "secret": api_canary}, format="json")
    assert created.status_code == 201, created.content
    hook_id = created.json()["id"]
    outputs.append(_text(created))
    client.force_login(sam)
    outputs.append(_text(client.post("/deployments/hooks/", {
        "name": "canary-page-hook", "url": url, "phase": "before_launch", "secret": page_canary,
        "timeout_seconds": 2, "is_enabled": "on"}, follow=True)))
    page_hook = Hook.objects.all_tenants().get(name="canary-page-hook")
    outputs.append(_text(admin.patch(f"/api/v1/hooks/{hook_id}/", {"secret": rotated}, format="json")))
    with django_capture_on_commit_callbacks(execute=True):
        outputs.append(_text(admin.post(f"/api/v1/hooks/{hook_id}/test/")))
        outputs.append(_text(client.post(f"/deployments/hooks/{page_hook.pk}/test/", follow=True)))
    assert HookDelivery.objects.all_tenants().filter(hook_id__in=[hook_id, page_hook.pk]).count() == 2
    for path in ("/api/v1/hooks/", f"/api/v1/hooks/{hook_id}/", "/api/v1/hook-deliveries/",
                 "/api/v1/audit-events/", "/api/v1/audit-events/export/"):
        response = admin.get(path)
        assert response.status_code == 200, (path, response.status_code)
        outputs.append(_text(response))
    for path in ("/deployments/hooks/", f"/deployments/hooks/{page_hook.pk}/edit/", "/audit/", "/audit/export.csv"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        outputs.append(_text(response))

    stored = " ".join(str(e.changes) + e.object_label for e in AuditEvent.objects.all_tenants())
    stored += " ".join(str(d.payload) + d.message for d in HookDelivery.objects.all_tenants())
    logs = "\n".join(r.getMessage() + str(r.args) + str(getattr(r, "exc_text", "")) for r in caplog.records)
    haystacks = {"responses": "\n".join(outputs), "stored": stored, "logs": logs + caplog.text}
    assert "canary-api-hook" in haystacks["responses"] and "canary-page-hook" in haystacks["responses"]
    for where, text in haystacks.items():
        for canary in (api_canary, page_canary, rotated):
            assert canary not in text, f"a hook secret leaked into {where}"
    hook = Hook.objects.all_tenants().get(pk=hook_id)
    assert rotated not in hook.secret_encrypted and hook.secret_last4 == rotated[-4:]

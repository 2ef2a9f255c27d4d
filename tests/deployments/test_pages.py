"""Deployment pages on the sim clouds: launching through the form (with the price, quota and placement preview),
the list and the deployment page with its operations, console, lease and transfer; who sees and who may act (another
organisation's rows are 404, a viewer sees but cannot act); approvals, quotas, hooks (the secret never shown), the
servers that need attention and the SSH keys of one's profile; constant query counts; the isolation walk of these
routes."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from django.db import connection
from django.forms.models import model_to_dict
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLResolver, include, path, reverse
from django.utils import timezone

import portal.urls as project_urls
from apps.accounts import urls as account_urls
from apps.accounts.models import Organization, SshKey
from apps.clouds.models import Operation
from apps.clouds.sim.models import SimServer
from apps.core.models import AuditEvent
from apps.deployments import views as deployment_views
from apps.deployments.models import (
    Approval,
    Deployment,
    Hook,
    HookDelivery,
    Instance,
    InstanceTransition,
    Quota,
    QuotaReservation,
)
from tests.catalog.walk import catalog_world
from tests.deployments.conftest import SIM_DATABASES
from tests.deployments.test_launch import launch
from tests.deployments.walk_pages import DEPLOYMENT_MODELS, ROUTES, deployments_world


# --- the URLs of these pages, until portal/urls.py and apps/accounts/urls.py include them ---------------------------
def _urlpatterns() -> list:
    patterns = list(project_urls.urlpatterns)
    if not any(isinstance(p, URLResolver) and p.namespace == "deployments" for p in patterns):
        patterns.append(path("deployments/", include("apps.deployments.urls")))
    if not any(getattr(p, "name", None) == "ssh-keys" for p in account_urls.urlpatterns):
        accounts = [*account_urls.urlpatterns,
                    path("ssh-keys/", deployment_views.ssh_keys, name="ssh-keys"),
                    path("ssh-keys/<int:pk>/delete/", deployment_views.ssh_key_delete, name="ssh-key-delete")]
        patterns = [p for p in patterns if not (isinstance(p, URLResolver) and p.namespace == "accounts")]
        patterns.append(path("accounts/", include((accounts, "accounts"))))
    return patterns


urlpatterns = _urlpatterns()
pytestmark = [pytest.mark.django_db(databases=SIM_DATABASES), pytest.mark.urls("tests.deployments.test_pages")]


def text(response) -> str:
    return response.content.decode()


def main(response) -> str:
    """The page without its frame (navigation, messages)."""
    return text(response).split('id="main"', 1)[1]


@pytest.fixture
def as_user():
    """as_user(user) → a test client signed in (session) as that user."""

    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def htmx():
    return {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def item(launch_world):
    return launch_world["items"]["debian-12-server"]


@pytest.fixture
def blueprint_item(launch_world):
    return launch_world["items"]["two-tier-web-application"]


@pytest.fixture
def running(connor, web, item, settle, django_capture_on_commit_callbacks):
    deployment, _ = launch(connor, web, item, "tiny-vm", django_capture_on_commit_callbacks)
    settle()
    deployment.refresh_from_db()
    assert deployment.state == "active"
    return deployment


def counts() -> dict[str, int]:
    return {
        "deployments": Deployment.objects.all_tenants().count(),
        "instances": Instance.objects.all_tenants().count(),
        "reservations": QuotaReservation.objects.all_tenants().count(),
        "operations": Operation.objects.all_tenants().count(),
        "servers": SimServer.objects.count(),
    }


# --- launching ------------------------------------------------------------------------------------------------------
def test_launch_through_the_form_ends_on_the_detail_page_and_the_sim_gets_the_server(
        as_user, connor, web, item, settle, django_capture_on_commit_callbacks):
    client = as_user(connor)
    page = client.get(f"/deployments/launch/{item.slug}/?project={web.pk}")
    assert page.status_code == 200
    body = main(page)
    # three things to decide, the rest under "More options", the price before launching
    for field in ('name="name"', 'name="size"', 'name="cloud"'):
        assert field in body
    assert "More options" in body and 'name="lease_days"' in body and 'name="ssh_key"' in body
    assert "/ hour" in body and "/ month" in body and "sim-west/west-1" in body
    assert '<option value="small" selected>' in body  # the item's size is the default
    key = re.search(r'name="idempotency_key" value="([0-9a-f]+)"', body).group(1)
    form = {"project": web.pk, "name": "web-box", "size": "small", "cloud": "cheapest", "ssh_key": "",
            "lease_days": "", "idempotency_key": key}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/deployments/launch/{item.slug}/", form)
    deployment = Deployment.objects.all_tenants().get(name="web-box")
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}/"
    assert deployment.owner == connor and deployment.project == web and deployment.catalog_item == item
    # a double submit of the same form answers with the same deployment
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(f"/deployments/launch/{item.slug}/", form)
    assert again["Location"] == f"/deployments/{deployment.pk}/"
    assert Deployment.objects.all_tenants().filter(name="web-box").count() == 1
    settle()
    [instance] = deployment.instances.all()
    assert instance.state == "running"
    server = SimServer.objects.get(server_id=instance.provider_server_id)
    assert server.tags["skyport:deployment"] == str(deployment.pk) and server.state == "running"
    detail = main(client.get(f"/deployments/{deployment.pk}/"))
    assert f'data-live-deployment="{deployment.pk}"' in detail and f'data-instance-state="{instance.pk}"' in detail
    assert f"ssh debian@{instance.public_ips[0]}" in detail
    assert "cheapest cloud that fits" in detail and "synced" in detail
    # the fragment the live script fetches after a missed event: the same element, at the current sequence
    deployment.refresh_from_db()
    fragment = text(client.get(f"/deployments/{deployment.pk}/live/"))
    assert "<html" not in fragment and fragment.lstrip().startswith(
        f'<div id="deployment-live" data-live-deployment="{deployment.pk}" data-sequence="{deployment.sequence}"')
    assert f'data-refresh-url="/deployments/{deployment.pk}/live/"' in fragment and "Running" in fragment


def test_a_blueprint_launch_asks_its_parameters_under_more_options(
        as_user, connor, web, blueprint_item, settle, django_capture_on_commit_callbacks):
    client = as_user(connor)
    body = main(client.get(f"/deployments/launch/{blueprint_item.slug}/"))
    assert 'name="size"' not in body  # a blueprint's servers have their own sizes
    assert 'name="param_web_count"' in body and 'value="2"' in body and "Number of web servers" in body
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/deployments/launch/{blueprint_item.slug}/", {
            "project": web.pk, "name": "shop", "cloud": "cheapest", "param_web_count": "1",
            "param_admin_email": "me@acme.example"})
    deployment = Deployment.objects.all_tenants().get(name="shop")
    assert response.status_code == 302
    assert deployment.parameters == {"web_count": 1, "admin_email": "me@acme.example"}
    assert sorted(deployment.instances.values_list("name", flat=True)) == ["shop-db-1", "shop-web-1"]


def test_a_bad_form_keeps_every_value_shows_the_errors_and_writes_nothing(
        as_user, connor, web, acme, blueprint_item, item, django_capture_on_commit_callbacks):
    client = as_user(connor)
    before = counts()
    response = client.post(f"/deployments/launch/{blueprint_item.slug}/", {
        "project": web.pk, "name": "Not A Name!", "cloud": "spread", "param_web_count": "99",
        "param_admin_email": "kept@acme.example", "lease_days": "0"})
    assert response.status_code == 400
    body = main(response)
    assert 'value="Not A Name!"' in body and 'value="99"' in body and 'value="kept@acme.example"' in body
    assert '<option value="spread" selected>' in body
    assert "Must be at most 8." in body  # the parameter's own rule, on its field
    assert "Ensure this value is greater than or equal to 1." in body
    assert "<details class=\"mt-2\" open>" in body  # errors under "More options" open it
    assert counts() == before
    # the shapes are right but the launch refuses: a quota of no vCPU at all
    Quota.objects.create(organization=acme, project=web, max_vcpus=0)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/deployments/launch/{item.slug}/", {
            "project": web.pk, "name": "too-big", "size": "large", "cloud": "cheapest"})
    assert response.status_code == 400
    body = main(response)
    assert "The vCPU quota of project Web would be exceeded" in body
    assert 'value="too-big"' in body and '<option value="large" selected>' in body
    assert counts() == before


def test_the_preview_shows_price_quota_and_where_it_goes(
        as_user, connor, web, acme, item, launch_world, htmx):
    Quota.objects.create(organization=acme, project=web, max_vcpus=10)
    QuotaReservation.objects.create(organization=acme, project=web, user=connor, vcpus=8, instances=4)
    client = as_user(connor)
    page = main(client.get(f"/deployments/launch/{item.slug}/?project={web.pk}"))
    assert "In project <strong>Web</strong>" in page and "8 of 10 vCPU used" in page
    assert 'hx-get="/deployments/launch/debian-12-server/preview/"' in page
    fragment = text(client.get(f"/deployments/launch/{item.slug}/preview/?project={web.pk}&size=small"
                               "&cloud=cheapest", **htmx))
    assert "<html" not in fragment
    assert "8 of 10 vCPU used" in fragment and "+1 for this launch" in fragment
    assert "sim-west/west-1" in fragment and "cheapest cloud that fits" in fragment
    # choosing a cloud moves it there; a bigger size shows a bigger price and goes over the quota
    east = launch_world["accounts"]["sim-east"]
    fragment = text(client.get(f"/deployments/launch/{item.slug}/preview/?project={web.pk}&size=large"
                               f"&cloud=account:{east.pk}", **htmx))
    assert "sim-east/" in fragment and "the cloud you chose" in fragment
    assert "+4 for this launch" in fragment and "text-danger" in fragment
    assert not Deployment.objects.all_tenants().exists()  # a preview writes nothing


def test_launch_is_refused_to_viewers_and_invisible_to_other_organisations(
        as_user, vera, mallory, web, item):
    assert as_user(vera).get(f"/deployments/launch/{item.slug}/").status_code == 403
    response = as_user(vera).post(f"/deployments/launch/{item.slug}/", {"project": web.pk, "name": "nope"})
    assert response.status_code == 403
    assert as_user(mallory).get(f"/deployments/launch/{item.slug}/").status_code == 404
    assert as_user(mallory).get(f"/deployments/launch/{item.slug}/preview/").status_code == 404
    assert not Deployment.objects.all_tenants().exists()


# --- operating ------------------------------------------------------------------------------------------------------
def test_ops_buttons_work(as_user, connor, running, settle, django_capture_on_commit_callbacks):
    client = as_user(connor)
    [instance] = running.instances.all()
    body = main(client.get(f"/deployments/{running.pk}/"))
    for button in ('value="stop"', 'value="reboot"', 'value="resize"', 'value="delete"', "Console"):
        assert button in body
    assert 'value="start"' not in body.split(f'id="instance-{instance.pk}"')[1].split("</tr>")[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/deployments/instances/{instance.pk}/action/", {"action": "stop"})
    assert response.status_code == 302
    settle()
    instance.refresh_from_db()
    assert instance.state == "stopped"
    assert SimServer.objects.get(server_id=instance.provider_server_id).state == "stopped"
    # a refused action says why and changes nothing
    operations = Operation.objects.all_tenants().count()
    response = client.post(f"/deployments/instances/{instance.pk}/action/", {"action": "reboot"}, follow=True)
    assert "Reboot needs a running server; tiny-vm is stopped." in text(response)
    assert Operation.objects.all_tenants().count() == operations
    body = main(response)
    assert 'value="start"' in body.split(f'id="instance-{instance.pk}"')[1].split("</tr>")[0]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/deployments/instances/{instance.pk}/action/", {"action": "resize", "size": "medium"})
    settle()
    instance.refresh_from_db()
    assert instance.size == "medium"
    if instance.state == "stopped":
        with django_capture_on_commit_callbacks(execute=True):
            client.post(f"/deployments/{running.pk}/action/", {"action": "start"})
        settle()
    instance.refresh_from_db()
    assert instance.state == "running"
    console = client.get(f"/deployments/instances/{instance.pk}/console/")
    assert console.status_code == 200 and "cloud-init: hostname tiny-vm" in text(console)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/deployments/{running.pk}/action/", {"action": "delete"})
    settle()
    running.refresh_from_db()
    assert running.state == "deleted"
    assert not SimServer.objects.filter(server_id=instance.provider_server_id).exclude(state="deleted").exists()
    timeline = main(client.get(f"/deployments/{running.pk}/")).split('id="timeline-h"')[1]
    assert "delete_server" in timeline and "stop_server" in timeline and "Deleted" in timeline


def test_lease_extend_and_transfer(as_user, connor, dennis, vera, running, django_capture_on_commit_callbacks):
    client = as_user(connor)
    body = main(client.get(f"/deployments/{running.pk}/"))
    owners = re.search(r'<select name="owner"[^>]*>(.*?)</select>', body, re.S).group(1)
    # who may take it: members who may launch in web (dennis, the org admin), not vera (viewer) nor connor himself
    assert "dennis" in owners and "sam" in owners and "vera" not in owners and "connor" not in owners
    response = client.post(f"/deployments/{running.pk}/extend/", {"lease_days": "0"})
    assert response.status_code == 400 and "greater than or equal to 1" in text(response)
    response = client.post(f"/deployments/{running.pk}/extend/", {"lease_days": "3"})
    running.refresh_from_db()
    assert response.status_code == 302 and running.lease_expires_at is not None
    assert 2 < (running.lease_expires_at - timezone.now()).days + 1 <= 3
    response = client.post(f"/deployments/{running.pk}/transfer/", {"owner": vera.pk})
    assert response.status_code == 400 and "Select a valid choice" in text(response)
    response = client.post(f"/deployments/{running.pk}/transfer/", {"owner": dennis.pk})
    running.refresh_from_db()
    assert response.status_code == 302 and running.owner == dennis
    assert InstanceTransition.objects.all_tenants().filter(cause="transfer", owner=dennis).count() == 1


def test_another_organisations_deployment_is_404_and_nothing_changes(as_user, mallory, running):
    [instance] = running.instances.all()
    client = as_user(mallory)
    for url in (f"/deployments/{running.pk}/", f"/deployments/{running.pk}/live/",
                f"/deployments/instances/{instance.pk}/console/"):
        assert client.get(url).status_code == 404, url
    for url, data in ((f"/deployments/{running.pk}/action/", {"action": "delete"}),
                      (f"/deployments/instances/{instance.pk}/action/", {"action": "stop"}),
                      (f"/deployments/{running.pk}/extend/", {"lease_days": 5}),
                      (f"/deployments/{running.pk}/transfer/", {"owner": mallory.pk})):
        assert client.post(url, data).status_code == 404, url
    assert "tiny-vm" not in text(client.get("/deployments/?owner=all"))
    before = counts()
    response = client.post("/deployments/bulk/", {"ids": [running.pk], "action": "delete"}, follow=True)
    assert "Select a valid choice" in text(response)
    assert counts() == before
    instance.refresh_from_db()
    running.refresh_from_db()
    assert (running.state, instance.state, running.owner.username) == ("active", "running", "connor")


def test_a_viewer_sees_but_has_no_buttons_and_a_post_is_403(as_user, vera, running):
    [instance] = running.instances.all()
    client = as_user(vera)
    body = main(client.get(f"/deployments/{running.pk}/"))
    assert "tiny-vm" in body and "read-only" in body
    assert 'name="action"' not in body and "Console" not in body and 'name="owner"' not in body
    assert 'name="ids"' not in main(client.get("/deployments/?owner=all"))
    operations = Operation.objects.all_tenants().count()
    for url, data in ((f"/deployments/{running.pk}/action/", {"action": "stop"}),
                      (f"/deployments/instances/{instance.pk}/action/", {"action": "stop"}),
                      (f"/deployments/{running.pk}/extend/", {"lease_days": 5}),
                      ("/deployments/bulk/", {"ids": [running.pk], "action": "stop"})):
        assert client.post(url, data).status_code == 403, url
    assert client.get(f"/deployments/instances/{instance.pk}/console/").status_code == 403
    instance.refresh_from_db()
    assert instance.state == "running" and Operation.objects.all_tenants().count() == operations


def test_list_filters_and_bulk_actions(as_user, connor, sam, running, item, web, settle,
                                       django_capture_on_commit_callbacks):
    other, _ = launch(connor, web, item, "second", django_capture_on_commit_callbacks)
    settle()
    client = as_user(connor)
    body = main(client.get("/deployments/"))
    assert "tiny-vm" in body and "second" in body and "sim-west" in body and "0.0" in body
    assert f'data-deployment-state="{running.pk}"' in body and 'data-live-list="/deployments/rows/"' in body
    assert "synced" in body or "never synced" in body
    rows = text(client.get("/deployments/rows/?state=active"))
    assert "<html" not in rows and "tiny-vm" in rows
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/deployments/bulk/", {"ids": [running.pk, other.pk], "action": "stop"})
    assert response.status_code == 302
    settle()
    assert set(Instance.objects.all_tenants().filter(deployment__in=[running, other]).values_list(
        "state", flat=True)) == {"stopped"}
    # the org admin's overview has everyone's; his own list is empty
    assert "tiny-vm" not in main(as_user(sam).get("/deployments/"))
    assert "tiny-vm" in main(as_user(sam).get("/deployments/?owner=all"))
    assert "tiny-vm" not in main(client.get("/deployments/?state=deleted"))


# --- approvals ------------------------------------------------------------------------------------------------------
def test_approvals_queue_approve_and_reject(as_user, connor, sam, web, item, settle,
                                            django_capture_on_commit_callbacks):
    type(item).objects.all_tenants().filter(pk=item.pk).update(approval_threshold_monthly=Decimal(0))
    client = as_user(connor)
    assert "always needs an approval" in main(client.get(f"/deployments/launch/{item.slug}/"))
    for name in ("wants-yes", "wants-no"):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/deployments/launch/{item.slug}/", {
                "project": web.pk, "name": name, "size": "small", "cloud": "cheapest"})
        assert response.status_code == 302
    yes = Deployment.objects.all_tenants().get(name="wants-yes")
    no = Deployment.objects.all_tenants().get(name="wants-no")
    assert yes.state == no.state == "pending_approval"
    assert "Waiting for an approval" in main(client.get(f"/deployments/{yes.pk}/"))
    assert client.get("/deployments/approvals/").status_code == 404  # consumers have no queue
    admin = as_user(sam)
    queue = main(admin.get("/deployments/approvals/"))
    assert "wants-yes" in queue and queue.count('value="approve"') == 2
    approval_no = Approval.objects.all_tenants().get(deployment=no)
    response = admin.post(f"/deployments/approvals/{approval_no.pk}/decide/", {"decision": "reject", "comment": ""})
    assert response.status_code == 400 and "Say why the request is rejected" in text(response)
    approval_no.refresh_from_db()
    assert approval_no.state == "pending"
    admin.post(f"/deployments/approvals/{approval_no.pk}/decide/", {"decision": "reject", "comment": "too big"})
    approval_yes = Approval.objects.all_tenants().get(deployment=yes)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(f"/deployments/approvals/{approval_yes.pk}/decide/",
                              {"decision": "approve", "comment": ""})
    assert response.status_code == 302
    settle()
    yes.refresh_from_db()
    no.refresh_from_db()
    assert (yes.state, no.state) == ("active", "rejected")
    assert "too big" in main(client.get(f"/deployments/{no.pk}/"))


def test_nobody_sees_approve_buttons_on_their_own_request(as_user, sam, web, item,
                                                          django_capture_on_commit_callbacks):
    type(item).objects.all_tenants().filter(pk=item.pk).update(approval_threshold_monthly=Decimal(0))
    admin = as_user(sam)
    with django_capture_on_commit_callbacks(execute=True):
        admin.post(f"/deployments/launch/{item.slug}/", {"project": web.pk, "name": "mine", "size": "small",
                                                         "cloud": "cheapest"})
    approval = Approval.objects.all_tenants().get(deployment__name="mine")
    queue = main(admin.get("/deployments/approvals/"))
    assert "mine" in queue and 'value="approve"' not in queue and "Your own request" in queue
    assert 'value="approve"' not in main(admin.get(f"/deployments/approvals/{approval.pk}/"))
    response = admin.post(f"/deployments/approvals/{approval.pk}/decide/", {"decision": "approve"})
    assert response.status_code == 403
    approval.refresh_from_db()
    assert approval.state == "pending"


# --- quotas ---------------------------------------------------------------------------------------------------------
def test_quotas_page_shows_usage_and_sets_and_clears_quotas(as_user, sam, connor, acme, web, data):
    Quota.objects.create(organization=acme, project=web, max_vcpus=10, max_instances=4)
    QuotaReservation.objects.create(organization=acme, project=web, user=connor, vcpus=3, instances=2)
    QuotaReservation.objects.create(organization=acme, project=data, user=connor, vcpus=5, instances=1)
    client = as_user(sam)
    body = main(client.get("/deployments/quotas/"))
    assert "Project Web" in body and "3 of 10 used" in body and "2 of 4 used" in body
    assert as_user(connor).get("/deployments/quotas/").status_code == 404
    pytest.importorskip("apps.deployments.quota_services")
    response = client.post("/deployments/quotas/", {"scope": "user", "user": "", "max_vcpus": "4"})
    assert response.status_code == 400 and "Choose the person." in text(response)
    response = client.post("/deployments/quotas/", {"scope": "user", "user": connor.pk, "max_vcpus": "16"})
    assert response.status_code == 302
    quota = Quota.objects.all_tenants().get(user=connor)
    assert quota.max_vcpus == 16 and quota.max_instances is None
    body = main(client.get("/deployments/quotas/"))
    assert "8 of 16 used" in body  # both of connor's reservations count against his own quota
    client.post(f"/deployments/quotas/{quota.pk}/delete/")
    assert not Quota.objects.all_tenants().filter(user=connor).exists()
    assert as_user(connor).post(f"/deployments/quotas/{Quota.objects.all_tenants().get().pk}/delete/").status_code \
        == 404


# --- hooks ----------------------------------------------------------------------------------------------------------
class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        body = b'{"allow": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


SECRET = "s3cr3t-hook-value-7f9aQ2"


def test_hooks_page_never_shows_the_secret(as_user, sam, connor, receiver):
    client = as_user(sam)
    response = client.post("/deployments/hooks/", {"name": "policy", "url": receiver, "phase": "before_launch",
                                                   "secret": "short", "timeout_seconds": 5, "is_enabled": "on"})
    assert response.status_code == 400 and 'value="short"' not in text(response)
    assert "at least 16 characters" in text(response) and not Hook.objects.all_tenants().exists()
    response = client.post("/deployments/hooks/", {"name": "policy", "url": receiver, "phase": "before_launch",
                                                   "secret": SECRET, "timeout_seconds": 5, "is_enabled": "on"})
    assert response.status_code == 302
    hook = Hook.objects.all_tenants().get(name="policy")
    assert hook.secret_last4 == SECRET[-4:]
    page = text(client.get("/deployments/hooks/"))
    assert "policy" in page and f"••••{SECRET[-4:]}" in page and SECRET not in page
    edit = text(client.get(f"/deployments/hooks/{hook.pk}/edit/"))
    assert SECRET not in edit and SECRET[-4:] in edit
    response = client.post(f"/deployments/hooks/{hook.pk}/edit/", {
        "name": "policy", "url": receiver, "phase": "before_launch", "secret": "", "timeout_seconds": 9,
        "is_enabled": "on"})
    assert response.status_code == 302
    hook.refresh_from_db()
    assert hook.timeout_seconds == 9 and hook.secret_last4 == SECRET[-4:]  # an empty secret keeps it
    response = client.post(f"/deployments/hooks/{hook.pk}/test/", follow=True)
    assert "Test delivered to policy (HTTP 200)" in text(response)
    delivery = HookDelivery.objects.all_tenants().get(hook=hook)
    assert delivery.state == "delivered" and _Receiver.received
    page = text(client.get("/deployments/hooks/"))
    assert "<code>test</code>" in page and "HTTP 200" in page and SECRET not in page
    assert not any(SECRET in str(e.changes) for e in AuditEvent.objects.all_tenants())
    assert as_user(connor).get("/deployments/hooks/").status_code == 404
    assert as_user(connor).post(f"/deployments/hooks/{hook.pk}/delete/").status_code == 404
    client.post(f"/deployments/hooks/{hook.pk}/delete/")
    assert not Hook.objects.all_tenants().exists()


# --- servers that need attention ------------------------------------------------------------------------------------
def test_attention_lists_errored_servers_for_org_roles_only(as_user, sam, connor, running, settle):
    [instance] = running.instances.all()
    from apps.deployments.transitions import transition

    transition(instance, to="error", cause="provider", message="disk on fire")
    body = main(as_user(sam).get("/deployments/attention/"))
    assert "tiny-vm" in body and "disk on fire" in body
    assert as_user(connor).get("/deployments/attention/").status_code == 404


def test_an_admin_adopts_a_server_found_in_a_cloud_account(as_user, sam, connor, web, running):
    from apps.clouds.drivers import driver_for
    from apps.clouds.drivers.base import CreateServer
    from apps.clouds.sim.services import sim_advance
    from apps.deployments.models import UnmanagedServer
    from apps.deployments.reconciler import sweep

    [ours] = running.instances.all()
    account = ours.account
    stray = driver_for(account, ours.region).create_server(CreateServer(
        name="legacy-db", image_id=ours.provider_image_id, size_id=ours.flavor_id))
    sim_advance(account.endpoint, 60)
    assert sweep(account, ours.region, worker_id="pages").ok
    server = UnmanagedServer.objects.all_tenants().get(provider_server_id=stray.id)
    client = as_user(sam)
    body = main(client.get("/deployments/attention/"))
    assert "legacy-db" in body and f'name="s{server.pk}-name"' in body
    before = counts()
    assert as_user(connor).post(f"/deployments/unmanaged/{server.pk}/adopt/", {
        f"s{server.pk}-project": web.pk, f"s{server.pk}-name": "mine"}).status_code == 404
    response = client.post(f"/deployments/unmanaged/{server.pk}/adopt/", {
        f"s{server.pk}-project": web.pk, f"s{server.pk}-name": ""})
    assert response.status_code == 400 and "This field is required." in text(response)
    assert counts() == before
    response = client.post(f"/deployments/unmanaged/{server.pk}/adopt/", {
        f"s{server.pk}-project": web.pk, f"s{server.pk}-name": "legacy-db"})
    adopted = Deployment.objects.all_tenants().get(name="legacy-db")
    assert response.status_code == 302 and response["Location"] == f"/deployments/{adopted.pk}/"
    assert adopted.placement == {"adopted": True} and adopted.instances.get().provider_server_id == stray.id
    assert not UnmanagedServer.objects.all_tenants().exists()
    assert "adopted from the cloud" in main(client.get(f"/deployments/{adopted.pk}/"))


# --- SSH keys -------------------------------------------------------------------------------------------------------
def _public_key(comment: str = "me@laptop") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + \
        f" {comment}"


def _keygen_fingerprint(public_key: str, tmp_path) -> str | None:
    if shutil.which("ssh-keygen") is None:
        return None
    path = tmp_path / "key.pub"
    path.write_text(public_key + "\n")
    return subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def test_ssh_keys_add_validate_and_delete(as_user, connor, vera, tmp_path):
    client = as_user(connor)
    public = _public_key()
    response = client.post("/accounts/ssh-keys/", {"name": "laptop", "public_key": public})
    assert response.status_code == 302
    key = SshKey.objects.get(user=connor)
    expected = _keygen_fingerprint(public, tmp_path)
    assert key.fingerprint.startswith("SHA256:") and (expected is None or key.fingerprint == expected)
    page = main(client.get("/accounts/ssh-keys/"))
    assert "laptop" in page and key.fingerprint in page
    # refused, nothing written: a duplicate name, the same key again, garbage, a weak RSA key, a private key
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    for data, message in (({"name": "Laptop", "public_key": _public_key()}, "You already have a key named laptop"),
                          ({"name": "again", "public_key": public}, "already in your profile as laptop"),
                          ({"name": "junk", "public_key": "ssh-ed25519 AAAAnotakey"}, "not valid base64"),
                          ({"name": "junk", "public_key": "ssh-ed25519 AAAAbm90YWtleQ=="},
                           "not a valid SSH public key"),
                          ({"name": "old", "public_key": weak}, "This RSA key has 1024 bits"),
                          ({"name": "oops", "public_key": private}, "This is a private key")):
        response = client.post("/accounts/ssh-keys/", data)
        assert response.status_code == 400 and message in text(response), message
        assert data["name"] in text(response)  # the input is kept ...
    assert "PRIVATE KEY" not in text(response)  # ... except a private key pasted by mistake
    assert SshKey.objects.filter(user=connor).count() == 1
    # offered at launch, and personal: another person cannot remove it
    assert as_user(vera).post(f"/accounts/ssh-keys/{key.pk}/delete/").status_code == 404
    assert f'id="ssh-key-{key.pk}"' in main(client.get("/accounts/ssh-keys/"))
    assert 'id="ssh-key-' not in main(as_user(vera).get("/accounts/ssh-keys/"))
    assert client.post(f"/accounts/ssh-keys/{key.pk}/delete/").status_code == 302
    assert not SshKey.objects.filter(user=connor).exists()


def test_the_chosen_key_is_installed_and_the_command_names_the_image_user(
        as_user, connor, web, item, settle, django_capture_on_commit_callbacks):
    client = as_user(connor)
    client.post("/accounts/ssh-keys/", {"name": "laptop", "public_key": _public_key()})
    key = SshKey.objects.get(user=connor)
    body = main(client.get(f"/deployments/launch/{item.slug}/"))
    assert f'<option value="{key.pk}" selected>laptop' in body
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/deployments/launch/{item.slug}/", {"project": web.pk, "name": "keyed", "size": "small",
                                                          "cloud": "cheapest", "ssh_key": key.pk})
    deployment = Deployment.objects.all_tenants().get(name="keyed")
    assert deployment.ssh_key_name == "laptop" and deployment.ssh_public_key == key.public_key
    settle()
    [instance] = deployment.instances.all()
    assert SimServer.objects.get(server_id=instance.provider_server_id).public_key == key.public_key


# --- query counts ---------------------------------------------------------------------------------------------------
def _rows(acme, web, connor, account, n, servers=1, start=0):
    made = []
    for i in range(start, start + n):
        deployment = Deployment.objects.create(organization=acme, project=web, owner=connor, name=f"many-{i}",
                                               state="active", lease_expires_at=timezone.now())
        for s in range(servers):
            instance = Instance.objects.create(
                organization=acme, project=web, deployment=deployment, owner=connor, name=f"many-{i}-{s}",
                role="server", index=s + 1, account=account, region="west-1", size="small", flavor_id="f",
                vcpus=1, ram_mb=1024, state="running", private_ips=[f"10.0.{i}.{s}"], last_synced_at=timezone.now(),
                price_per_hour=Decimal("0.01"))
            now = timezone.now()
            for to in ("building", "running"):
                InstanceTransition.objects.create(
                    organization=acme, project=web, instance=instance, from_state="pending", to_state=to,
                    cause="launch", observed_at=now, detected_at=now, owner=connor, account=account,
                    region="west-1", flavor_id="f", size="small", vcpus=1, ram_mb=1024)
        made.append(deployment)
    return made


def _queries(client, url):
    assert client.get(url).status_code == 200  # warm-up: session and caches
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries), text(response)


def test_list_and_detail_query_counts_do_not_grow_with_rows(as_user, connor, sam, acme, web, launch_world):
    account = launch_world["accounts"]["sim-west"]
    [first] = _rows(acme, web, connor, account, 1, servers=1)
    client = as_user(connor)
    small_list, body = _queries(client, "/deployments/")
    small_all, _ = _queries(as_user(sam), "/deployments/?owner=all")
    small_detail, _ = _queries(client, f"/deployments/{first.pk}/")
    small_live, _ = _queries(client, f"/deployments/{first.pk}/live/")
    assert "many-0" in body and "many-4" not in body
    [big] = _rows(acme, web, connor, account, 1, servers=5, start=1)
    _rows(acme, web, connor, account, 3, servers=2, start=2)
    big_list, body = _queries(client, "/deployments/")
    assert "many-4" in body
    assert big_list == small_list
    assert _queries(as_user(sam), "/deployments/?owner=all")[0] == small_all
    big_detail, body = _queries(client, f"/deployments/{big.pk}/")
    assert "many-1-4" in body and big_detail == small_detail
    assert _queries(client, f"/deployments/{big.pk}/live/")[0] == small_live


# --- the isolation walk of these routes -----------------------------------------------------------------------------
MARK = "ACMEMARK"


def _walk_url(name, route, world):
    kwargs = dict(route.get("kwargs", {}))
    if route.get("obj"):
        kwargs["pk"] = world[route["obj"]].pk
    return reverse(name, kwargs=kwargs or None)


def _snapshot(acme):
    def rows(model):
        return sorted(tuple(sorted((k, str(v)) for k, v in model_to_dict(r).items()))
                      for r in model.objects.all_tenants().filter(organization=acme))

    return {m.__name__: rows(m) for m in (*DEPLOYMENT_MODELS, AuditEvent)} | {
        "ssh": sorted(SshKey.objects.values_list("pk", "name"))}


@pytest.fixture
def walk_world(acme, web, data, connor, personas):
    from tests.test_route_walk import _acme_cloud

    Organization.objects.all_tenants().filter(pk=acme.pk).update(name=f"Acme {MARK}")
    acme.refresh_from_db()
    cloud = _acme_cloud(acme, web)
    catalog = catalog_world(MARK, acme, web, data, cloud["cloud_account"])
    return {**cloud, **catalog, **deployments_world(MARK, acme, web, cloud["cloud_account"], connor)}


def test_every_deployment_page_route_is_in_the_walk():
    from tests.test_route_walk import all_routes

    names = {n for n in all_routes() if n.startswith("deployments:")} | {"accounts:ssh-keys",
                                                                          "accounts:ssh-key-delete"}
    assert names == set(ROUTES)


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_walk_outsider_sees_nothing_and_changes_nothing(client, walk_world, mallory, acme, name):
    route = ROUTES[name]
    url = _walk_url(name, route, walk_world)
    client.force_login(mallory)
    before = _snapshot(acme)
    for method in route.get("methods", ("get",)):
        response = client.get(url) if method == "get" else client.post(url, {})
        if route.get("obj"):
            assert response.status_code == 404, (method, response.status_code)
        body = text(response)
        assert MARK not in body and MARK.lower() not in body, (method, body[:300])
    assert _snapshot(acme) == before


@pytest.mark.parametrize("name", sorted(n for n, r in ROUTES.items() if set(r.get("methods", ("get",))) - {"get"}))
def test_walk_viewer_cannot_write(client, walk_world, vera, acme, name):
    route = ROUTES[name]
    client.force_login(vera)
    before = _snapshot(acme)
    response = client.post(_walk_url(name, route, walk_world), {})
    assert response.status_code in (400, 403, 404), (response.status_code, text(response)[:300])
    assert _snapshot(acme) == before


@pytest.mark.parametrize("name", sorted(n for n, r in ROUTES.items() if "get" in r.get("methods", ("get",))))
def test_walk_allowed_role_gets_an_answer(client, walk_world, personas, name):
    route = ROUTES[name]
    client.force_login(personas[route.get("allowed", "sam")])
    response = client.get(_walk_url(name, route, walk_world))
    assert response.status_code in route.get("ok", (200,)), (response.status_code, text(response)[:500])
    if route.get("shows_marker"):
        body = text(response).split('id="main"', 1)[-1]
        assert MARK in body or MARK.lower() in body, body[:500]


def test_the_list_shows_fifty_newest_per_page_and_counts_them_all(as_user, connor, acme, web, launch_world):
    from apps.deployments.views import LIST_PAGE_SIZE

    account = launch_world["accounts"]["sim-west"]
    made = _rows(acme, web, connor, account, LIST_PAGE_SIZE + 3, servers=1)
    client = as_user(connor)
    first = client.get("/deployments/").content.decode()
    second = client.get("/deployments/?page=2").content.decode()
    shown_first = first.count('<tr id="deployment-')
    assert shown_first == LIST_PAGE_SIZE == 50
    total = Deployment.objects.all_tenants().filter(owner=connor).exclude(state__in=("deleted",)).count()
    assert second.count('<tr id="deployment-') == total - LIST_PAGE_SIZE
    newest, oldest = made[-1], made[0]
    assert f'id="deployment-{newest.pk}"' in first and f'id="deployment-{newest.pk}"' not in second
    assert f'id="deployment-{oldest.pk}"' in second and f'id="deployment-{oldest.pk}"' not in first
    assert f'border">{total}</span>' in first  # the heading counts every deployment, not the page

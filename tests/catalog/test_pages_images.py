"""Image pages: the list with live copy chips, detail with copies, retry, shares and the push dialog, the import form
(upload, URL, provider image), the security admin's approval queue; who sees what; constant query counts."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.catalog.models import Image, ImageCopy, ImageShare
from apps.clouds.models import CloudImage
from apps.core.models import AuditEvent
from tests.catalog.conftest import needs_qemu, stored_files
from tests.catalog.pages_world import build_world, grow_images

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(acme, web, dennis):
    return build_world(acme, web, dennis)


def text(response) -> str:
    return response.content.decode()


# --- list and detail -------------------------------------------------------------------------------------------------
def test_images_list_shows_states_approval_and_copy_chips(client, dennis, world):
    client.force_login(dennis)
    page = text(client.get("/catalog/images/"))
    assert "Debian" in page and "Ubuntu" in page
    assert "Waiting for approval" in page and "Approved" in page
    chip = re.search(rf'<span class="sky-chip" data-copy-id="{world["failed"].pk}"[^>]*>', page)
    assert chip and 'data-state="failed"' in chip.group(0) and "the upload timed out" in chip.group(0)
    # a row knows where to fetch itself again, and the page opens the live socket
    assert f'data-refresh-url="/catalog/images/{world["debian"].pk}/row/"' in page
    assert 'id="catalog-live" data-ws-url="/ws/catalog/"' in page
    assert "catalog-live.js" in page


def test_row_partials_are_fragments(client, dennis, world):
    client.force_login(dennis)
    row = text(client.get(f"/catalog/images/{world['debian'].pk}/row/"))
    assert row.lstrip().startswith("<tr") and "<html" not in row and "Available" in row
    copy = text(client.get(f"/catalog/copies/{world['failed'].pk}/row/"))
    assert copy.lstrip().startswith("<tr") and "Retry" in copy and "the upload timed out" in copy


def test_detail_shows_metadata_copies_retry_and_shares(client, dennis, world):
    client.force_login(dennis)
    page = text(client.get(f"/catalog/images/{world['debian'].pk}/"))
    assert "ab" * 32 in page and "qcow2" in page
    assert f'action="/catalog/copies/{world["failed"].pk}/retry/"' in page
    assert f'action="/catalog/copies/{world["available"].pk}/retry/"' not in page  # only failed copies retry
    assert "Share with project" in page and "Data" in page
    assert 'id="push-dialog"' in page
    assert "image-approve" not in page and "/approve/" not in page  # a designer does not approve


def test_push_dialog_lists_the_targets_of_the_service(client, dennis, world):
    Image.objects.all_tenants().filter(pk=world["debian"].pk).update(store_key="masters/x.qcow2")
    client.force_login(dennis)
    page = text(client.get(f"/catalog/images/{world['debian'].pk}/"))
    account = world["account"]
    assert f'value="{account.pk}:region-1"' in page and f'value="{account.pk}:region-2"' in page
    assert "already there" in page


def test_push_without_a_choice_is_an_error_and_writes_nothing(client, dennis, world):
    Image.objects.all_tenants().filter(pk=world["debian"].pk).update(store_key="masters/x.qcow2")
    client.force_login(dennis)
    before = ImageCopy.objects.all_tenants().count()
    response = client.post(f"/catalog/images/{world['debian'].pk}/push/", {})
    assert response.status_code == 400
    assert "Choose at least one account and region." in text(response)
    assert "data-open-on-load" in text(response)  # the dialog opens again with its error
    bogus = client.post(f"/catalog/images/{world['debian'].pk}/push/", {"targets": ["999:nowhere"]})
    assert bogus.status_code == 400
    assert ImageCopy.objects.all_tenants().count() == before


def test_push_refused_by_the_service_is_a_form_error(client, dennis, world):
    # an adopted provider image has no file Skyport could copy: the service says so in the dialog
    image = world["debian"]
    Image.objects.all_tenants().filter(pk=image.pk).update(store_key="masters/x.qcow2", source=Image.Source.PROVIDER)
    client.force_login(dennis)
    response = client.post(f"/catalog/images/{image.pk}/push/", {"targets": [f"{world['account'].pk}:region-2"]})
    assert response.status_code == 400
    page = text(response)
    assert "exists only at its provider" in page and "data-open-on-load" in page
    assert f'value="{world["account"].pk}:region-2" class="form-check-input" id="id_targets_1" checked' in page
    assert ImageCopy.objects.all_tenants().get(pk=world["failed"].pk).attempts == 1


def test_push_starts_the_chosen_copies(client, dennis, world, django_capture_on_commit_callbacks, monkeypatch):
    from apps.catalog import tasks

    queued = []
    monkeypatch.setattr(tasks.image_copy_push_task, "delay", lambda copy_id: queued.append(copy_id))
    Image.objects.all_tenants().filter(pk=world["debian"].pk).update(store_key="masters/x.qcow2")
    client.force_login(dennis)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/catalog/images/{world['debian'].pk}/push/",
                               {"targets": [f"{world['account'].pk}:region-1", f"{world['account'].pk}:region-2"]})
    assert response.status_code == 302
    assert queued == [world["failed"].pk]  # the available copy is left alone, the failed one starts again


def test_retry_a_failed_copy(client, dennis, world, django_capture_on_commit_callbacks, monkeypatch):
    from apps.catalog import tasks

    queued = []
    monkeypatch.setattr(tasks.image_copy_push_task, "delay", lambda copy_id: queued.append(copy_id))
    Image.objects.all_tenants().filter(pk=world["debian"].pk).update(store_key="masters/x.qcow2")
    client.force_login(dennis)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/catalog/copies/{world['failed'].pk}/retry/")
    assert response.status_code == 302 and response["Location"] == f"/catalog/images/{world['debian'].pk}/"
    copy = ImageCopy.objects.all_tenants().get(pk=world["failed"].pk)
    assert (copy.state, copy.attempts, copy.error) == (ImageCopy.State.PENDING, 2, "")
    assert queued == [copy.pk]


def test_share_with_a_project_and_unshare(client, dennis, world, data):
    client.force_login(dennis)
    response = client.post(f"/catalog/images/{world['debian'].pk}/share/", {"project": data.pk})
    assert response.status_code == 302
    share = ImageShare.objects.all_tenants().get(image=world["debian"], project=data)
    assert client.post(f"/catalog/shares/{share.pk}/remove/").status_code == 302
    assert not ImageShare.objects.all_tenants().filter(pk=share.pk).exists()


def test_share_with_an_unknown_project_is_refused(client, dennis, world, ops):
    client.force_login(dennis)
    response = client.post(f"/catalog/images/{world['debian'].pk}/share/", {"project": ops.pk})
    assert response.status_code == 400 and "Select a valid choice" in text(response)
    assert not ImageShare.objects.all_tenants().exists()


# --- import -------------------------------------------------------------------------------------------------------
@needs_qemu
def test_upload_a_disk_image(client, dennis, web, disk, image_store_dir):
    client.force_login(dennis)
    path = disk("qcow2")
    with path.open("rb") as f:
        response = client.post("/catalog/images/import/", {
            "source": "upload", "project": web.pk, "name": "Alpine", "version": "3.20", "arch": "x86_64", "file": f,
        })
    assert response.status_code == 302
    image = Image.objects.all_tenants().get(name="Alpine")
    assert response["Location"] == f"/catalog/images/{image.pk}/"
    assert (image.disk_format, image.state, image.created_by) == ("qcow2", Image.State.READY, dennis)
    assert len(stored_files(image_store_dir)) == 1


@needs_qemu
def test_upload_of_a_non_image_keeps_the_input_and_stores_nothing(client, dennis, web, tmp_path, image_store_dir):
    client.force_login(dennis)
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a disk image\n" * 50)
    with bogus.open("rb") as f:
        response = client.post("/catalog/images/import/", {
            "source": "upload", "project": web.pk, "name": "Keep me", "version": "7", "arch": "x86_64", "file": f,
        })
    assert response.status_code == 400
    page = text(response)
    assert 'value="Keep me"' in page and 'value="7"' in page
    assert 'class="invalid-feedback d-block"' in page
    assert not Image.objects.all_tenants().exists()
    assert stored_files(image_store_dir) == []


@needs_qemu
def test_upload_with_a_wrong_checksum_is_refused(client, dennis, web, disk, image_store_dir):
    client.force_login(dennis)
    with disk("raw").open("rb") as f:
        response = client.post("/catalog/images/import/", {
            "source": "upload", "project": web.pk, "name": "Raw", "arch": "x86_64", "file": f,
            "expected_sha256": "0" * 64,
        })
    assert response.status_code == 400 and "not the expected" in text(response)
    assert not Image.objects.all_tenants().exists() and stored_files(image_store_dir) == []


def test_import_form_checks_shapes_first(client, dennis, web):
    client.force_login(dennis)
    response = client.post("/catalog/images/import/", {"source": "url", "project": web.pk, "name": "",
                                                       "url": "not a url", "expected_sha256": "xyz"})
    assert response.status_code == 400
    page = text(response)
    assert "Enter a valid URL." in page and "64 hexadecimal characters" in page
    assert not Image.objects.all_tenants().exists()


def test_import_from_a_url_is_queued(client, dennis, web, django_capture_on_commit_callbacks, monkeypatch):
    from apps.catalog import tasks

    queued = []
    monkeypatch.setattr(tasks.image_import_url_task, "delay", lambda image_id: queued.append(image_id))
    client.force_login(dennis)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/catalog/images/import/", {
            "source": "url", "project": web.pk, "name": "Fedora", "version": "40", "arch": "x86_64",
            "url": "http://127.0.0.1:9/fedora-40.qcow2",
        })
    assert response.status_code == 302
    image = Image.objects.all_tenants().get(name="Fedora")
    assert image.state == Image.State.IMPORTING and queued == [image.pk]


def test_url_refused_by_the_service_keeps_the_input(client, dennis, web):
    client.force_login(dennis)
    response = client.post("/catalog/images/import/", {
        "source": "url", "project": web.pk, "name": "Fedora", "version": "40", "arch": "x86_64",
        "url": "https://images.invalid/fedora-40.qcow2",
    })
    assert response.status_code == 400
    page = text(response)
    assert "cannot be resolved" in page and 'value="https://images.invalid/fedora-40.qcow2"' in page
    assert not Image.objects.all_tenants().exists()


def test_provider_tab_lists_images_of_granted_accounts_only(client, dennis, acme, world):
    from tests.catalog.test_profiles import make_account

    granted = CloudImage.objects.create(organization=acme, account=world["account"], region="region-1",
                                        provider_id="ami-1", name="granted-image", os="Debian")
    other = make_account(acme, "not-granted")
    CloudImage.objects.create(organization=acme, account=other, region="region-1", provider_id="ami-2",
                              name="hidden-image")
    client.force_login(dennis)
    page = text(client.get("/catalog/images/import/?source=provider"))
    assert f'value="{granted.pk}"' in page and "granted-image" in page
    assert "hidden-image" not in page


# --- approval -------------------------------------------------------------------------------------------------------
def test_approval_queue_lists_pending_first_with_the_facts(client, sarah, world):
    client.force_login(sarah)
    page = text(client.get("/catalog/approvals/"))
    assert page.index("Ubuntu") < page.index("Debian")  # pending first
    assert "1 waiting" in page
    assert "Dennis" in page  # who imported it
    assert "Uploaded file" in page and "ab" * 32 in page and "2.0\xa0MB" in page


def test_approve_with_a_note(client, sarah, world):
    client.force_login(sarah)
    image = world["pending"]
    response = client.post(f"/catalog/images/{image.pk}/approve/", {"note": "checked", "next": "/catalog/approvals/"})
    assert response.status_code == 302 and response["Location"] == "/catalog/approvals/"
    image.refresh_from_db()
    assert (image.approval, image.approval_note, image.approved_by) == (Image.Approval.APPROVED, "checked", sarah)


def test_revoke_needs_a_note_and_changes_nothing_without_one(client, sarah, world):
    client.force_login(sarah)
    image = world["debian"]
    response = client.post(f"/catalog/images/{image.pk}/revoke/", {"note": ""})
    assert response.status_code == 400 and "Say why the image is revoked." in text(response)
    image.refresh_from_db()
    assert image.approval == Image.Approval.APPROVED
    assert not AuditEvent.objects.all_tenants().filter(verb="image.revoke").exists()
    ok = client.post(f"/catalog/images/{image.pk}/revoke/", {"note": "CVE-2024-0001"})
    assert ok.status_code == 302
    image.refresh_from_db()
    assert (image.approval, image.approval_note) == (Image.Approval.REVOKED, "CVE-2024-0001")


def test_next_never_leaves_the_site(client, sarah, world):
    client.force_login(sarah)
    response = client.post(f"/catalog/images/{world['pending'].pk}/approve/", {"next": "https://evil.example/"})
    assert response["Location"] == "/catalog/approvals/"


# --- who sees what ----------------------------------------------------------------------------------------------------
def test_who_may_do_what(client, personas, world):
    image, copy = world["debian"], world["failed"]
    expect = {
        # user: (list, detail, approvals, import, approve)
        "dennis": (200, 200, 403, 200, 403),
        "sarah": (200, 200, 200, 403, 302),
        "marty": (200, 200, 403, 403, 403),
        "connor": (404, 404, 404, 404, 404),
        "vera": (404, 404, 404, 404, 404),
        "mallory": (200, 404, 200, 200, 404),
    }
    for name, codes in expect.items():
        client.force_login(personas[name])
        got = (
            client.get("/catalog/images/").status_code,
            client.get(f"/catalog/images/{image.pk}/").status_code,
            client.get("/catalog/approvals/").status_code,
            client.get("/catalog/images/import/").status_code,
            client.post(f"/catalog/images/{world['pending'].pk}/approve/").status_code,
        )
        assert got == codes, name
    client.force_login(personas["sarah"])
    assert client.post(f"/catalog/copies/{copy.pk}/retry/").status_code == 403
    assert client.post(f"/catalog/images/{image.pk}/push/", {}).status_code == 403
    client.force_login(personas["mallory"])
    assert client.get(f"/catalog/copies/{copy.pk}/row/").status_code == 404
    assert "Debian" not in text(client.get("/catalog/images/"))
    assert ImageCopy.objects.all_tenants().get(pk=copy.pk).attempts == 1


def test_list_pages_run_a_constant_number_of_queries(client, dennis, sarah, acme, web, world):
    grow_images(acme, web, world["account"], 1)
    pages = ((dennis, "/catalog/images/"), (sarah, "/catalog/approvals/"))
    counts = {}
    for user, url in pages:
        client.force_login(user)
        client.get(url)
        with CaptureQueriesContext(connection) as small:
            assert client.get(url).status_code == 200
        counts[url] = len(small.captured_queries)
    grow_images(acme, web, world["account"], 9, start=1)  # 3 images → 12 images
    for user, url in pages:
        client.force_login(user)
        client.get(url)
        with CaptureQueriesContext(connection) as large:
            response = client.get(url)
        assert "Image 9" in text(response)
        assert len(large.captured_queries) == counts[url], url

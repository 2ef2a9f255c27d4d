"""The images API: uploads streamed through the upload handlers, URL and provider imports, push and copies, approval,
sharing; who may do what; structured 400s that store nothing; list query counts that do not grow."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.catalog.models import Image, ImageCopy, ImageShare
from apps.clouds.models import CloudImage
from apps.core.models import AuditEvent
from tests.api.conftest import count
from tests.catalog.conftest import needs_qemu, scratch_files, stored_files
from tests.catalog.test_profiles import make_account, make_image
from tests.clouds.accounts_world import DBS

pytestmark = pytest.mark.django_db(databases=DBS)

IMAGES = "/api/v1/images/"


def _rows() -> tuple[int, int, int, int]:
    return count(Image), count(ImageCopy), count(ImageShare), AuditEvent.objects.all_tenants().count()


def _error(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return response.json()["error"]


# --- upload ------------------------------------------------------------------------------------------------------
@needs_qemu
def test_upload_streams_a_disk_image_and_answers_the_ready_image(api, dennis, web, disk, image_store_dir):
    path = disk("qcow2", "32M")
    with path.open("rb") as fileobj:
        response = api(dennis).post(
            f"{IMAGES}upload/",
            {"file": fileobj, "project": web.pk, "name": "Debian", "version": "12", "os": "Debian"},
            format="multipart",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "ready" and body["disk_format"] == "qcow2" and body["source"] == "upload"
    assert body["approval"] == "pending" and body["is_approved"] is False
    assert body["source_filename"] == path.name and len(body["checksum_sha256"]) == 64
    assert body["virtual_size_bytes"] == 32 * 1024**2 and body["project"] == web.pk
    assert "store_key" not in body
    image = Image.objects.all_tenants().get(pk=body["id"])
    assert image.created_by == dennis and len(stored_files(image_store_dir)) == 1
    assert not scratch_files(image_store_dir)


@needs_qemu
def test_upload_of_a_file_that_is_not_a_disk_image_stores_nothing(api, dennis, web, image_store_dir):
    before = _rows()
    text = SimpleUploadedFile("notes.qcow2", b"#!/bin/sh\necho not a disk\n" * 100)
    response = api(dennis).post(f"{IMAGES}upload/", {"file": text, "project": web.pk, "name": "Fake"},
                                format="multipart")
    assert response.status_code == 400, response.content
    error = _error(response)
    assert error["code"] == "invalid" and "file" in error["fields"]
    assert _rows() == before
    assert not stored_files(image_store_dir) and not scratch_files(image_store_dir)


def test_upload_beyond_the_size_limit_is_a_clear_400(api, dennis, web, settings, image_store_dir):
    settings.SKYPORT_IMAGE_MAX_BYTES = 64 * 1024
    before = _rows()
    big = SimpleUploadedFile("big.raw", b"\0" * (200 * 1024))
    response = api(dennis).post(f"{IMAGES}upload/", {"file": big, "project": web.pk, "name": "Big"},
                                format="multipart")
    assert response.status_code == 400, response.content
    error = _error(response)
    assert error["fields"]["file"] == ["The file is larger than the limit of 65536 bytes."]
    assert _rows() == before and not stored_files(image_store_dir)


def test_a_body_announced_beyond_the_limit_is_refused_before_it_is_read(api, dennis, web, settings):
    settings.SKYPORT_IMAGE_MAX_BYTES = 1024
    before = _rows()
    big = SimpleUploadedFile("big.raw", b"\0" * (1024 * 1024 + 64 * 1024))
    response = api(dennis).post(f"{IMAGES}upload/", {"file": big, "project": web.pk, "name": "Big"},
                                format="multipart")
    assert response.status_code == 400
    assert "larger than the limit" in _error(response)["fields"]["file"][0]
    assert _rows() == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"colour": "blue"}, "colour"),
        ({"project": "<ops>"}, "project"),
        ({"project": 999999}, "project"),
        ({"arch": "sparc"}, "arch"),
        ({"expected_sha256": "abc"}, "expected_sha256"),
    ],
)
def test_upload_bad_fields_are_a_structured_400(api, dennis, web, ops, changes, field):
    body = {"file": SimpleUploadedFile("d.qcow2", b"x" * 10), "project": web.pk, "name": "Debian"}
    body.update({k: (ops.pk if v == "<ops>" else v) for k, v in changes.items()})
    before = _rows()
    response = api(dennis).post(f"{IMAGES}upload/", body, format="multipart")
    assert response.status_code == 400, response.content
    assert field in _error(response)["fields"]
    assert _rows() == before


def test_upload_needs_a_file(api, dennis, web):
    response = api(dennis).post(f"{IMAGES}upload/", {"project": web.pk, "name": "Debian"}, format="json")
    assert response.status_code == 400 and "file" in _error(response)["fields"]
    assert count(Image) == 0


# --- import from a URL -------------------------------------------------------------------------------------------
def test_url_import_answers_an_importing_image_without_the_url_secrets(api, dennis, web):
    url = "http://127.0.0.1:9/images/debian.qcow2?X-Amz-Signature=s3cr3tsig&X-Amz-Credential=AKIAEXAMPLE"
    response = api(dennis).post(IMAGES, {"project": web.pk, "name": "Debian", "version": "12", "url": url},
                                format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "importing" and body["source"] == "url"
    assert body["source_url"] == "http://127.0.0.1:9/images/debian.qcow2"
    assert "s3cr3tsig" not in response.content.decode() and "AKIAEXAMPLE" not in response.content.decode()
    listing = api(dennis).get(IMAGES).content.decode()
    assert "Debian" in listing and "s3cr3tsig" not in listing
    assert Image.objects.all_tenants().get(pk=body["id"]).source_url == url


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"url": "ftp://127.0.0.1/x.qcow2"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/x.qcow2"}, "url"),
        ({"url": "https://127.0.0.1/x", "project": "<ops>"}, "project"),
        ({"url": "https://127.0.0.1/x", "store_key": "../../etc/passwd"}, "store_key"),
        ({"url": "https://127.0.0.1/x", "state": "ready"}, "state"),
    ],
)
def test_url_import_bad_input_stores_nothing(api, dennis, web, ops, payload, field):
    body = {"project": web.pk, "name": "Debian"}
    body.update({k: (ops.pk if v == "<ops>" else v) for k, v in payload.items()})
    before = _rows()
    response = api(dennis).post(IMAGES, body, format="json")
    assert response.status_code == 400, response.content
    assert field in _error(response)["fields"]
    assert "pw@" not in response.content.decode()
    assert _rows() == before


def test_malformed_json_and_non_object_bodies(api, dennis):
    before = _rows()
    response = api(dennis).post(IMAGES, data='{"name": ', content_type="application/json")
    assert response.status_code == 400 and _error(response)["code"] == "malformed_request"
    response = api(dennis).post(IMAGES, data="[1]", content_type="application/json")
    assert response.status_code == 400 and _error(response)["code"] == "invalid"
    assert _rows() == before


# --- reading and changing ----------------------------------------------------------------------------------------
@pytest.fixture
def debian(web):
    return make_image(web, "Debian", "12", approval=Image.Approval.PENDING, store_key="masters/abc/disk.qcow2")


def test_who_sees_images(api, sam, sarah, dennis, connor, vera, mallory, debian):
    url = f"{IMAGES}{debian.pk}/"
    for user in (sam, sarah, dennis):
        assert api(user).get(url).status_code == 200
        assert api(user).get(IMAGES).json()["count"] == 1
    for user in (connor, vera, mallory):
        assert api(user).get(url).status_code == 404
        assert api(user).get(IMAGES).json()["count"] == 0


def test_patch_changes_the_description_fields_only(api, dennis, sarah, debian):
    url = f"{IMAGES}{debian.pk}/"
    response = api(dennis).patch(url, {"description": "Debian bookworm", "os": "Debian"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["description"] == "Debian bookworm"
    before = _rows()
    for changes in ({"approval": "approved"}, {"state": "failed"}, {"disk_format": "raw"}, {"project": 1}):
        response = api(dennis).patch(url, changes, format="json")
        assert response.status_code == 400, (changes, response.content)
    assert api(sarah).patch(url, {"description": "x"}, format="json").status_code == 403
    debian.refresh_from_db()
    assert debian.approval == "pending" and debian.description == "Debian bookworm"
    assert _rows() == before


def test_delete(api, dennis, sarah, mallory, debian):
    url = f"{IMAGES}{debian.pk}/"
    assert api(mallory).delete(url).status_code == 404
    assert api(sarah).delete(url).status_code == 403
    assert count(Image, pk=debian.pk) == 1
    assert api(dennis).delete(url).status_code == 204
    assert count(Image, pk=debian.pk) == 0


def test_approve_and_revoke(api, sarah, dennis, vera, mallory, debian):
    base = f"{IMAGES}{debian.pk}"
    assert api(dennis).post(f"{base}/approve/", {}, format="json").status_code == 403
    assert api(vera).post(f"{base}/approve/", {}, format="json").status_code == 404
    assert api(mallory).post(f"{base}/approve/", {}, format="json").status_code == 404
    debian.refresh_from_db()
    assert debian.approval == "pending"
    response = api(sarah).post(f"{base}/approve/", {"note": "CIS hardened"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["approval"] == "approved" and body["approved_by"] == "sarah" and body["approval_note"] == "CIS hardened"
    # a revocation needs a reason
    for payload in ({}, {"note": ""}):
        response = api(sarah).post(f"{base}/revoke/", payload, format="json")
        assert response.status_code == 400 and "note" in _error(response)["fields"]
    debian.refresh_from_db()
    assert debian.approval == "approved"
    response = api(sarah).post(f"{base}/revoke/", {"note": "CVE-2026-1234"}, format="json")
    assert response.status_code == 200 and response.json()["approval"] == "revoked"
    assert api(sarah).post(f"{base}/approve/", {"bogus": 1}, format="json").status_code == 400


def test_shares(api, dennis, sarah, vera, mallory, debian, data, ops):
    base = f"{IMAGES}{debian.pk}/shares/"
    assert api(sarah).post(base, {"project": data.pk}, format="json").status_code == 403
    assert api(vera).post(base, {"project": data.pk}, format="json").status_code == 404
    assert api(mallory).get(base).status_code == 404
    response = api(dennis).post(base, {"project": ops.pk}, format="json")
    assert response.status_code == 400 and "project" in _error(response)["fields"]
    assert count(ImageShare) == 0
    response = api(dennis).post(base, {"project": data.pk}, format="json")
    assert response.status_code == 201, response.content
    share = response.json()
    assert share["project"] == data.pk and share["shared_by"] == "dennis" and share["image_name"] == "Debian"
    assert [s["project"] for s in api(sarah).get(base).json()] == [data.pk]
    assert api(dennis).get(f"/api/v1/image-shares/?image={debian.pk}").json()["count"] == 1
    # sharing twice is refused, with the reason
    again = api(dennis).post(base, {"project": data.pk}, format="json")
    assert again.status_code == 400 and count(ImageShare) == 1
    url = f"/api/v1/image-shares/{share['id']}/"
    assert api(mallory).delete(url).status_code == 404
    assert api(sarah).delete(url).status_code == 403
    assert api(dennis).delete(url).status_code == 204
    assert count(ImageShare) == 0


# --- push and copies -----------------------------------------------------------------------------------------------
@pytest.fixture
def ready(web, acme):
    """A ready image with a stored master (the push task itself is not run in these tests)."""
    return make_image(web, "Ubuntu", "24.04", store_key="masters/ubuntu/disk.qcow2", size_bytes=1024)


def test_push_targets_and_push(api, dennis, vera, mallory, ready, east_granted, globex):
    base = f"{IMAGES}{ready.pk}"
    targets = api(dennis).get(f"{base}/push-targets/").json()
    assert {"account": east_granted.pk, "account_name": "east", "region": "region-1"} in targets
    foreign = make_account(globex, "globex-cloud")
    before = _rows()
    for payload, field in (
        ({"targets": []}, "targets"),
        ({"targets": [{"account": foreign.pk, "region": "region-1"}]}, "targets"),
        ({"targets": [{"account": east_granted.pk}]}, "targets"),
        ({"targets": [{"account": east_granted.pk, "region": "mars-1"}]}, "targets"),
        ({"target": []}, "target"),
    ):
        response = api(dennis).post(f"{base}/push/", payload, format="json")
        assert response.status_code == 400, (payload, response.content)
        assert field in _error(response)["fields"], response.content
    assert api(vera).post(f"{base}/push/", {"targets": []}, format="json").status_code == 404
    assert api(mallory).post(f"{base}/push/", {"targets": []}, format="json").status_code == 404
    assert _rows() == before
    response = api(dennis).post(f"{base}/push/", {"targets": [{"account": east_granted.pk, "region": "region-1"}]},
                                format="json")
    assert response.status_code == 202, response.content
    (copy,) = response.json()
    assert copy["state"] == "pending" and copy["progress"] == 0 and copy["account_name"] == "east"
    assert copy["image"] == ready.pk and copy["requested_by"] == "dennis" and copy["attempts"] == 1
    # progress is read from the copies
    listed = api(dennis).get(f"/api/v1/image-copies/?image={ready.pk}").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == copy["id"]
    assert api(dennis).get(f"{base}/").json()["copies"][0]["state"] == "pending"
    assert api(dennis).get("/api/v1/image-copies/?state=available").json()["count"] == 0
    assert api(dennis).get("/api/v1/image-copies/?active=true").json()["count"] == 1


def test_retry_a_failed_copy(api, dennis, sarah, mallory, ready, east_granted, acme):
    failed = ImageCopy.objects.create(organization=acme, image=ready, account=east_granted, region="region-1",
                                      state=ImageCopy.State.FAILED, error="upload timed out", attempts=1)
    url = f"/api/v1/image-copies/{failed.pk}/retry/"
    assert api(mallory).post(url).status_code == 404
    assert api(sarah).post(url).status_code == 403
    body = api(dennis).get(f"/api/v1/image-copies/{failed.pk}/").json()
    assert body["state"] == "failed" and body["error"] == "upload timed out"
    response = api(dennis).post(url)
    assert response.status_code == 202, response.content
    assert response.json()["state"] == "pending" and response.json()["attempts"] == 2
    # only a failed copy can be retried
    again = api(dennis).post(url)
    assert again.status_code == 400 and "failed" in _error(again)["message"]
    failed.refresh_from_db()
    assert failed.attempts == 2


def test_import_a_provider_image(api, dennis, mallory, web, ops, east_granted):
    cloud_image = CloudImage.objects.all_tenants().filter(account=east_granted, region="region-1").first()
    payload = {"cloud_image": cloud_image.pk, "project": web.pk, "name": "Provider Debian"}
    response = api(mallory).post(f"{IMAGES}import-provider/", {**payload, "project": ops.pk}, format="json")
    assert response.status_code == 400 and "cloud_image" in _error(response)["fields"]
    assert count(Image) == 0
    response = api(dennis).post(f"{IMAGES}import-provider/", payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["source"] == "provider" and body["state"] == "ready"
    copies = api(dennis).get(f"/api/v1/image-copies/?image={body['id']}").json()["results"]
    assert [(c["state"], c["provider_image_id"]) for c in copies] == [("available", cloud_image.provider_id)]


# --- lists in a fixed number of queries ---------------------------------------------------------------------------
def _grow_images(acme, web, data, account, n: int, start: int) -> None:
    for i in range(start, start + n):
        image = make_image(web, f"img-{i}", "1", created_by=None)
        ImageCopy.objects.create(organization=acme, image=image, account=account, region="region-1",
                                 state=ImageCopy.State.AVAILABLE, provider_image_id=f"p-{i}")
        ImageShare.objects.create(organization=acme, image=image, project=data)


@pytest.mark.parametrize("path", ["images", "image-copies", "image-shares"])
def test_list_query_counts_do_not_grow(api, dennis, acme, web, data, path, django_assert_max_num_queries):
    account = make_account(acme, "counting")
    client = api(dennis)
    _grow_images(acme, web, data, account, 3, 0)
    client.get(f"/api/v1/{path}/")
    with django_assert_max_num_queries(12) as small:
        assert client.get(f"/api/v1/{path}/").json()["count"] == 3
    _grow_images(acme, web, data, account, 9, 3)
    with django_assert_max_num_queries(len(small.captured_queries)):
        assert client.get(f"/api/v1/{path}/").json()["count"] == 12


@needs_qemu
def test_push_progress_is_read_from_the_copies(api, dennis, sarah, web, disk, east_granted,
                                               django_capture_on_commit_callbacks):
    path = disk("qcow2", "16M", fill=True)
    with path.open("rb") as fileobj:
        image = api(dennis).post(f"{IMAGES}upload/", {"file": fileobj, "project": web.pk, "name": "Alpine"},
                                 format="multipart").json()
    target = {"targets": [{"account": east_granted.pk, "region": "region-1"}]}
    with django_capture_on_commit_callbacks(execute=True):
        response = api(dennis).post(f"{IMAGES}{image['id']}/push/", target, format="json")
    assert response.status_code == 202, response.content
    (copy,) = api(sarah).get(f"/api/v1/image-copies/?image={image['id']}").json()["results"]
    assert copy["state"] == "available" and copy["progress"] == 100 and copy["error"] == ""
    assert copy["provider_image_id"] and copy["is_active"] is False
    assert "sim-test-key" not in api(sarah).get(f"/api/v1/image-copies/{copy['id']}/").content.decode()

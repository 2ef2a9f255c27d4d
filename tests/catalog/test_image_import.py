"""Image import: uploads checked with qemu-img before anything is kept, URL imports downloaded by a task under the
outbound rules, provider images, and the image store's two backends (a directory and S3 on moto)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import time
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied

from apps.catalog import images, store
from apps.catalog.models import Image, ImageCopy
from apps.clouds.models import CloudImage
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from tests.catalog.conftest import needs_qemu, scratch_files, stored_files, upload, upload_bytes
from tests.clouds.accounts_world import DBS

pytestmark = [pytest.mark.django_db, needs_qemu]


def images_in(org) -> int:
    return Image.objects.all_tenants().filter(organization=org).count()


# --- upload ------------------------------------------------------------------------------------------------------
def test_upload_is_inspected_stored_and_audited(dennis, web, disk, image_store_dir, live_events,
                                                django_capture_on_commit_callbacks):
    path = disk("qcow2", "32M", fill=True, name="debian-12.qcow2")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with django_capture_on_commit_callbacks(execute=True):
        image = upload(dennis, web, path, os="Debian", expected_sha256=sha.upper())
    image.refresh_from_db()
    assert image.state == Image.State.READY
    assert image.disk_format == "qcow2"  # detected, never taken from the name
    assert image.checksum_sha256 == sha
    assert image.size_bytes == path.stat().st_size
    assert image.virtual_size_bytes == 32 * 1024 * 1024
    assert image.source_filename == "debian-12.qcow2"
    assert image.approval == Image.Approval.PENDING
    assert "debian" not in image.store_key  # keys come from ids, never from the user's file name
    stored = stored_files(image_store_dir)
    assert [p.read_bytes() for p in stored] == [path.read_bytes()]
    assert scratch_files(image_store_dir) == []
    assert AuditEvent.objects.all_tenants().filter(verb="image.import_upload", object_id=str(image.pk)).exists()
    assert any(e["event"] == "image" and e["id"] == image.pk and e["state"] == "ready" for e in live_events)


def test_upload_format_comes_from_the_bytes(dennis, web, disk):
    path = disk("vpc", "16M", name="really-a-vhd.qcow2")
    assert upload(dennis, web, path).disk_format == "vhd"


def test_text_file_renamed_qcow2_is_refused_and_nothing_is_stored(dennis, acme, web, image_store_dir):
    before = images_in(acme)
    with pytest.raises(ServiceError) as caught:
        upload_bytes(dennis, web, b"just some notes\n" * 1000, "notes.qcow2")
    assert "This file is not a disk image: it looks like text" in caught.value.message_dict["file"][0]
    assert images_in(acme) == before
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []
    assert not AuditEvent.objects.all_tenants().filter(verb="image.import_upload").exists()


def test_backing_file_upload_is_refused_and_nothing_is_stored(dennis, acme, web, disk, image_store_dir):
    base = disk("qcow2", name="base.qcow2")
    top = disk("qcow2", "16M", "-b", str(base), "-F", "qcow2", name="top.qcow2")
    before = images_in(acme)
    with pytest.raises(ServiceError, match="backing file"):
        upload(dennis, web, top)
    assert images_in(acme) == before
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []


def test_sha256_mismatch_is_refused_and_nothing_is_stored(dennis, acme, web, disk, image_store_dir):
    path = disk("qcow2")
    before = images_in(acme)
    with pytest.raises(ServiceError) as caught:
        upload(dennis, web, path, expected_sha256="0" * 64)
    assert "not the expected" in caught.value.message_dict["expected_sha256"][0]
    assert images_in(acme) == before
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []


def test_malformed_sha256_is_refused_before_reading(dennis, web):
    class Unread(io.BytesIO):
        def read(self, *args):  # pragma: no cover - must not be called
            raise AssertionError("the file was read")

    with pytest.raises(ServiceError, match="64 hexadecimal"):
        images.image_import_upload(actor=dennis, project=web, name="x", fileobj=Unread(), filename="x.img",
                                   expected_sha256="abc")


def test_upload_over_the_size_limit_is_refused(dennis, acme, web, disk, settings, image_store_dir):
    settings.SKYPORT_IMAGE_MAX_BYTES = 100 * 1024
    path = disk("raw", "1M")
    before = images_in(acme)
    with pytest.raises(ServiceError, match="larger than the limit"):
        upload(dennis, web, path)
    assert images_in(acme) == before
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []


def test_same_name_and_version_is_refused(dennis, web, disk):
    upload(dennis, web, disk("qcow2"))
    with pytest.raises(ServiceError, match="already has an image Debian 12"):
        upload(dennis, web, disk("raw", name="other.raw"))


@pytest.mark.parametrize("who", ["connor", "vera", "mallory"])
def test_only_designers_and_admins_import(who, personas, web, disk, acme):
    before = images_in(acme)
    with pytest.raises(PermissionDenied):
        upload(personas[who], web, disk("qcow2"))
    assert images_in(acme) == before


# --- URL ---------------------------------------------------------------------------------------------------------
class _Server:
    def __init__(self, root: Path) -> None:
        files = root

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(files), **kwargs)

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/redirect-inward"):
                    self.send_response(302)
                    self.send_header("Location", "http://10.0.0.1/disk.qcow2")
                    self.end_headers()
                    return
                if self.path.startswith("/trickle"):
                    # a server that keeps the connection alive with a little data now and then, for ever
                    self.send_response(200)
                    self.send_header("Content-Length", str(1024 * 1024))
                    self.end_headers()
                    try:
                        for _ in range(40):
                            self.wfile.write(b"\0" * 64 * 1024)
                            self.wfile.flush()
                            time.sleep(0.25)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if self.path.startswith("/redirect-local"):
                    self.send_response(302)
                    self.send_header("Location", "/disk.qcow2")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_files(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    yield root, server.url
    server.stop()


def test_url_import_downloads_checks_and_stores(dennis, web, disk, http_files, image_store_dir, live_events,
                                                django_capture_on_commit_callbacks):
    root, base = http_files
    source = disk("qcow2", "32M", fill=True)
    (root / "disk.qcow2").write_bytes(source.read_bytes())
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    with django_capture_on_commit_callbacks(execute=True):
        image = images.image_import_url(actor=dennis, project=web, name="Web base", version="1",
                                        url=f"{base}/disk.qcow2", expected_sha256=sha)
        assert image.state == Image.State.IMPORTING
    image.refresh_from_db()
    assert image.state == Image.State.READY, image.error
    assert (image.disk_format, image.checksum_sha256, image.progress) == ("qcow2", sha, 100)
    assert image.source == Image.Source.URL and image.source_filename == "disk.qcow2"
    assert [p.read_bytes() for p in stored_files(image_store_dir)] == [source.read_bytes()]
    states = [e["state"] for e in live_events if e["event"] == "image" and e["id"] == image.pk]
    assert states[0] == "importing" and states[-1] == "ready"
    assert any(0 < e["progress"] < 100 for e in live_events if e["id"] == image.pk)
    assert AuditEvent.objects.all_tenants().filter(verb="image.import_ready", object_id=str(image.pk)).exists()


def test_url_import_follows_a_safe_redirect(dennis, web, disk, http_files, django_capture_on_commit_callbacks):
    root, base = http_files
    (root / "disk.qcow2").write_bytes(disk("qcow2").read_bytes())
    with django_capture_on_commit_callbacks(execute=True):
        image = images.image_import_url(actor=dennis, project=web, name="Redirected", url=f"{base}/redirect-local")
    image.refresh_from_db()
    assert image.state == Image.State.READY, image.error


def test_url_import_of_a_text_file_fails_with_the_reason(dennis, web, http_files, image_store_dir,
                                                         django_capture_on_commit_callbacks):
    root, base = http_files
    (root / "page.qcow2").write_text("<html><body>Not found, but with a 200</body></html>\n" * 20)
    with django_capture_on_commit_callbacks(execute=True):
        image = images.image_import_url(actor=dennis, project=web, name="Broken", url=f"{base}/page.qcow2")
    image.refresh_from_db()
    assert image.state == Image.State.FAILED
    assert "it looks like text" in image.error
    assert image.store_key == ""
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []


def test_url_import_checksum_mismatch_and_http_errors_fail(dennis, web, disk, http_files,
                                                           django_capture_on_commit_callbacks):
    root, base = http_files
    (root / "disk.qcow2").write_bytes(disk("qcow2").read_bytes())
    with django_capture_on_commit_callbacks(execute=True):
        wrong = images.image_import_url(actor=dennis, project=web, name="Wrong sum", url=f"{base}/disk.qcow2",
                                        expected_sha256="1" * 64)
        missing = images.image_import_url(actor=dennis, project=web, name="Missing", url=f"{base}/nothing.qcow2")
    wrong.refresh_from_db()
    missing.refresh_from_db()
    assert wrong.state == missing.state == Image.State.FAILED
    assert "not the expected" in wrong.error
    assert "404" in missing.error


def test_url_import_refuses_a_redirect_inward(dennis, web, http_files, image_store_dir,
                                              django_capture_on_commit_callbacks):
    _, base = http_files
    with django_capture_on_commit_callbacks(execute=True):
        image = images.image_import_url(actor=dennis, project=web, name="Bounced", url=f"{base}/redirect-inward")
    image.refresh_from_db()
    assert image.state == Image.State.FAILED
    assert "redirected to a refused address" in image.error and "10.0.0.1" in image.error
    assert stored_files(image_store_dir) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [("http://10.0.0.1/disk.qcow2", "private address"), ("file:///etc/passwd", "must start with"),
     ("http://169.254.169.254/latest/meta-data", "link-local"), ("ftp://example.org/x.img", "must start with")],
)
def test_refused_urls_store_nothing(dennis, acme, web, url, message, django_capture_on_commit_callbacks):
    before = images_in(acme)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(ServiceError) as caught:
        images.image_import_url(actor=dennis, project=web, name="Refused", url=url)
    assert message in caught.value.message_dict["url"][0]
    assert images_in(acme) == before
    assert callbacks == []


def test_url_import_over_the_size_limit_fails(dennis, web, disk, http_files, settings,
                                              django_capture_on_commit_callbacks):
    settings.SKYPORT_IMAGE_MAX_BYTES = 64 * 1024
    root, base = http_files
    (root / "big.raw").write_bytes(bytes(range(256)) * 1024)
    with django_capture_on_commit_callbacks(execute=True):
        image = images.image_import_url(actor=dennis, project=web, name="Big", url=f"{base}/big.raw")
    image.refresh_from_db()
    assert image.state == Image.State.FAILED and "larger than the limit" in image.error


def test_url_import_that_trickles_past_the_overall_deadline_is_stopped(dennis, web, http_files, settings,
                                                                        image_store_dir,
                                                                        django_capture_on_commit_callbacks):
    settings.SKYPORT_IMAGE_DOWNLOAD_MAX_SECONDS = 1  # each wait for data is short, but the whole never ends
    _, base = http_files
    with django_capture_on_commit_callbacks(execute=True):
        image = images.image_import_url(actor=dennis, project=web, name="Trickle", url=f"{base}/trickle")
    image.refresh_from_db()
    assert image.state == Image.State.FAILED and "took longer than 1 seconds" in image.error
    assert stored_files(image_store_dir) == []


# --- provider images -------------------------------------------------------------------------------------------------
@pytest.mark.django_db(databases=DBS)
def test_provider_image_import_makes_an_available_copy(dennis, web, east_granted):
    cloud_image = CloudImage.objects.all_tenants().get(account=east_granted, region="region-1",
                                                        provider_id="debian-12")
    image = images.image_import_provider(actor=dennis, project=web, cloud_image=cloud_image, name="Debian (east)")
    assert (image.source, image.state, image.store_key) == (Image.Source.PROVIDER, Image.State.READY, "")
    copy = ImageCopy.objects.all_tenants().get(image=image)
    assert (copy.account_id, copy.region, copy.provider_image_id, copy.state) == (
        east_granted.pk, "region-1", "debian-12", ImageCopy.State.AVAILABLE)
    with pytest.raises(ServiceError, match="already in the catalog"):
        images.image_import_provider(actor=dennis, project=web, cloud_image=cloud_image, name="Again")


@pytest.mark.django_db(databases=DBS)
def test_provider_image_needs_the_account_region_for_the_project(dennis, data, east_granted):
    # data has east only in region-1
    cloud_image = CloudImage.objects.all_tenants().get(account=east_granted, region="region-2",
                                                        provider_id="debian-12")
    with pytest.raises(ServiceError, match="only in region-1"):
        images.image_import_provider(actor=dennis, project=data, cloud_image=cloud_image, name="Debian r2")
    assert not Image.objects.all_tenants().filter(name="Debian r2").exists()


@pytest.mark.django_db(databases=DBS)
def test_provider_image_cannot_be_pushed_elsewhere(dennis, web, east_granted):
    cloud_image = CloudImage.objects.all_tenants().get(account=east_granted, region="region-1",
                                                        provider_id="ubuntu-24.04")
    image = images.image_import_provider(actor=dennis, project=web, cloud_image=cloud_image, name="Ubuntu (east)")
    with pytest.raises(ServiceError, match="exists only at its provider"):
        images.image_push(actor=dennis, image=image, targets=[(east_granted, "region-2")])
    assert ImageCopy.objects.all_tenants().filter(image=image).count() == 1


# --- delete ------------------------------------------------------------------------------------------------------
def test_delete_removes_the_row_and_the_files(dennis, web, disk, image_store_dir,
                                              django_capture_on_commit_callbacks):
    image = upload(dennis, web, disk("qcow2"))
    assert stored_files(image_store_dir)
    with django_capture_on_commit_callbacks(execute=True):
        images.image_delete(actor=dennis, image=image)
    assert not Image.objects.all_tenants().filter(pk=image.pk).exists()
    assert stored_files(image_store_dir) == []
    assert AuditEvent.objects.all_tenants().filter(verb="image.delete", object_id=str(image.pk)).exists()


def test_update_changes_fields_and_audits(dennis, web, disk):
    image = upload(dennis, web, disk("qcow2"))
    images.image_update(actor=dennis, image=image, description="Base image", min_ram_mb=1024)
    image.refresh_from_db()
    assert (image.description, image.min_ram_mb) == ("Base image", 1024)
    event = AuditEvent.objects.all_tenants().get(verb="image.update", object_id=str(image.pk))
    assert event.changes["description"] == {"from": "", "to": "Base image"}
    with pytest.raises(ServiceError, match="cannot be changed"):
        images.image_update(actor=dennis, image=image, disk_format="raw")


# --- the store backends --------------------------------------------------------------------------------------------
def test_file_store_round_trip_and_limit(image_store_dir):
    files = store.FileStore(image_store_dir)
    data = bytes(range(256)) * 5000
    size, sha = files.put_stream("images/1/master.raw", io.BytesIO(data), max_bytes=len(data))
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert files.exists("images/1/master.raw")
    with files.local_path("images/1/master.raw") as path:
        assert Path(path).read_bytes() == data
    with pytest.raises(store.TooLarge):
        files.put_stream("images/2/master.raw", io.BytesIO(data), max_bytes=len(data) - 1)
    assert not files.exists("images/2/master.raw")
    assert scratch_files(image_store_dir) == []
    files.delete("images/1/master.raw")
    assert not files.exists("images/1/master.raw")
    with pytest.raises(ValueError):
        files.path("../etc/passwd")


def test_s3_store_round_trip(s3_store, image_store_dir):
    client, bucket = s3_store
    s3 = store.get_store()
    assert isinstance(s3, store.S3Store)
    data = bytes(range(256)) * 6000
    assert s3.put_stream("images/7/master.raw", io.BytesIO(data), max_bytes=10**7) == (
        len(data), hashlib.sha256(data).hexdigest())
    assert client.get_object(Bucket=bucket, Key="images/7/master.raw")["Body"].read() == data
    assert s3.exists("images/7/master.raw") and s3.size("images/7/master.raw") == len(data)
    with s3.local_path("images/7/master.raw") as path:
        assert Path(path).read_bytes() == data
    assert not Path(path).exists()  # the download is removed after use
    fetched = s3.fetch("images/7/master.raw")
    assert Path(fetched).read_bytes() == data
    s3.release("images/7/master.raw")
    assert not Path(fetched).exists()
    with pytest.raises(store.TooLarge):
        s3.put_stream("images/8/master.raw", io.BytesIO(data), max_bytes=1000)
    assert not s3.exists("images/8/master.raw")
    s3.delete("images/7/master.raw")
    assert not s3.exists("images/7/master.raw")
    assert scratch_files(image_store_dir) == []


def test_upload_into_the_s3_store(s3_store, dennis, web, disk, image_store_dir):
    client, bucket = s3_store
    path = disk("qcow2")
    image = upload(dennis, web, path)
    body = client.get_object(Bucket=bucket, Key=image.store_key)["Body"].read()
    assert body == path.read_bytes()
    assert stored_files(image_store_dir) == []  # nothing kept locally


def test_s3_errors_do_not_show_credentials(moto_server, settings):
    settings.SKYPORT_IMAGE_STORE = "s3"
    settings.SKYPORT_IMAGE_S3_ENDPOINT = moto_server.url
    settings.SKYPORT_IMAGE_S3_BUCKET = "no-such-bucket"
    settings.SKYPORT_IMAGE_S3_ACCESS_KEY = "AKIASECRETLOOKING"
    settings.SKYPORT_IMAGE_S3_SECRET_KEY = "very-secret-value"
    moto_server.set_auth(False)
    with pytest.raises(store.StoreError) as caught, store.get_store().local_path("images/1/master.raw"):
        pass
    assert "very-secret-value" not in str(caught.value) and "AKIASECRETLOOKING" not in str(caught.value)


"""Refusals at the edges of the catalog: hostile YAML values and counts, crafted disk images, outbound downloads
that resolve inward, image pushes that share files, and foreign or malformed ids in the API."""

from __future__ import annotations

import textwrap

import pytest

from apps.catalog.blueprints import blueprint_preview, validate_blueprint
from tests.catalog.test_blueprints import EXAMPLE, catalog  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db

BLUEPRINTS = "/api/v1/blueprints/"


# --- blueprints ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, shown", [("9" * 5000, "999999"), ("2024-02-30", "2024-02-30")])
def test_unbuildable_yaml_values_are_issues_with_their_line(api, dennis, web, catalog, value, shown):  # noqa: F811
    source = EXAMPLE.replace("count: 1\n", f"count: {value}\n")
    spec, issues = validate_blueprint(source, organization=web.organization)
    assert spec is None and len(issues) == 1
    assert issues[0].line == 21 and issues[0].column == 12 and shown in issues[0].message
    response = api(dennis).post(f"{BLUEPRINTS}validate/", {"source": source, "project": web.pk}, format="json")
    assert response.status_code == 200 and response.json()["valid"] is False
    assert response.json()["issues"][0]["line"] == 21
    before = list(web.blueprints.values_list("pk", flat=True))
    created = api(dennis).post(BLUEPRINTS, {"project": web.pk, "name": "Big", "source": source}, format="json")
    assert created.status_code == 400 and "line 21" in str(created.json())
    assert list(web.blueprints.values_list("pk", flat=True)) == before


COUNTED = textwrap.dedent("""\
    version: 1
    parameters:
      few: {type: integer}
      many: {type: integer}
    servers:
      aaa: {image: Debian 12, profile: small, count: "{{ few }}"}
      bbb: {image: Debian 12, profile: small, count: "{{ many }}"}
    """)


@pytest.mark.parametrize("few, many", [(-10_000_000, 10_000_000), (0, 5), (-1, 1)])
def test_preview_refuses_counts_below_one_instead_of_building_millions(web, catalog, few, many):  # noqa: F811
    spec, issues = validate_blueprint(COUNTED, organization=web.organization)
    assert spec is not None, issues
    preview = blueprint_preview(spec, organization=web.organization, project=web,
                                parameters={"few": few, "many": many})
    assert len(preview.instances) <= 100
    assert any("aaa" in p and "at least 1" in p for p in preview.problems), preview.problems


def test_preview_refuses_one_huge_count(api, dennis, web, catalog):  # noqa: F811
    spec, _ = validate_blueprint(COUNTED, organization=web.organization)
    response = api(dennis).post(f"{BLUEPRINTS}preview/", {"source": COUNTED, "project": web.pk,
                                                          "parameters": {"few": 1, "many": 100_000}}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is False and len(body["instances"]) <= 100
    assert any("bbb" in p and "at most 100" in p for p in body["problems"]), body["problems"]


def test_count_parameter_default_outside_one_to_hundred_is_an_issue(web, catalog):  # noqa: F811
    source = COUNTED.replace("few: {type: integer}", "few: {type: integer, default: -3}")
    spec, issues = validate_blueprint(source, organization=web.organization)
    assert spec is None
    assert [(i.line, "default must be between 1 and 100" in i.message) for i in issues] == [(3, True)]


# --- crafted VMDKs: refused before qemu-img opens anything -------------------------------------------------------
def _vmdk_with_descriptor(disk, tmp_path, descriptor: bytes, *, capacity: int | None = None,
                          desc_sectors: int | None = None, name: str = "crafted.vmdk"):
    import struct

    base = disk("vmdk", "1M", name="base.vmdk")
    data = bytearray(base.read_bytes())
    offset, size = struct.unpack("<QQ", data[28:44])
    region = bytearray(size * 512)
    region[: len(descriptor)] = descriptor
    data[offset * 512:(offset + size) * 512] = region
    if capacity is not None:
        data[12:20] = struct.pack("<Q", capacity)
    if desc_sectors is not None:
        data[36:44] = struct.pack("<Q", desc_sectors)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def qemu_runs(monkeypatch):
    import subprocess

    from apps.catalog import qemu

    runs: list[list[str]] = []
    real_run = subprocess.run

    def spy(command, *args, **kwargs):
        runs.append(list(command))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(qemu.subprocess, "run", spy)
    return runs


def test_vmdk_whose_header_defers_to_a_hidden_descriptor_is_refused_before_qemu_img(disk, tmp_path, qemu_runs):
    from apps.catalog import qemu

    target = tmp_path / "server-file.raw"
    target.write_bytes(b"not for images" * 1000)
    # the header says the descriptor is one sector long; qemu reads on, to the flat extent naming a server file
    visible = b"# Disk DescriptorFile\nversion=1\nCID=8f0a2c40\nparentCID=ffffffff\n"
    visible += b"# padding\n" * ((520 - len(visible)) // 10 + 1)
    hidden = b'createType="monolithicFlat"\nRW 2048 FLAT "' + str(target).encode() + b'" 0\n'
    path = _vmdk_with_descriptor(disk, tmp_path, visible + hidden, capacity=0, desc_sectors=1)
    qemu_runs.clear()
    with pytest.raises(qemu.ImageRejected, match="embedded descriptor"):
        qemu.inspect(str(path))
    assert qemu_runs == []  # qemu-img never opened it (nor the file it names)


@pytest.mark.parametrize("hint", [b'parentFileNameHint="{p}"', b'x-parentFileNameHint="{p}"'])
def test_vmdk_with_a_parent_disk_is_refused_before_qemu_img(disk, tmp_path, qemu_runs, hint):
    from apps.catalog import qemu

    parent = disk("raw", "1M", name="parent.raw")
    descriptor = (b'# Disk DescriptorFile\nversion=1\nCID=8f0a2c40\nparentCID=12345678\ncreateType="monolithicSparse"\n'
                  + hint.replace(b"{p}", str(parent).encode()) + b'\nRW 2048 SPARSE "base.vmdk"\n')
    path = _vmdk_with_descriptor(disk, tmp_path, descriptor)
    qemu_runs.clear()
    with pytest.raises(qemu.ImageRejected, match="parent disk"):
        qemu.inspect(str(path))
    assert qemu_runs == []


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_single_file_vmdks_still_pass(disk, qemu_runs, subformat):
    from apps.catalog import qemu

    path = disk("vmdk", "4M", "-o", f"subformat={subformat}", fill=True)
    qemu_runs.clear()
    assert qemu.inspect(str(path)).format == "vmdk"
    assert len(qemu_runs) == 1 and qemu_runs[0][0].endswith("prlimit")


# --- URL import: the address checked is the address connected to --------------------------------------------------
def test_url_import_name_that_rebinds_inward_never_reaches_the_inside(dennis, web, disk, http_files, settings,
                                                                      monkeypatch, image_store_dir):
    import socket
    import sys

    from apps.catalog import images
    from apps.catalog.models import Image
    from tests.catalog.conftest import stored_files

    root, base = http_files
    (root / "disk.qcow2").write_bytes(disk("qcow2").read_bytes())
    port = int(base.rsplit(":", 1)[1])
    hits: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host, *args, **kwargs):
        if host != "images.rebind.test":
            return real_getaddrinfo(host, *args, **kwargs)
        # a public answer for whoever checks the name, the loopback one for a connection made by name
        inward = sys._getframe(1).f_code.co_name == "create_connection"
        address = "127.0.0.1" if inward else "93.184.216.34"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    def create_connection(address, *args, **kwargs):
        hits.append(address[0])
        if address[0] == "93.184.216.34":
            raise ConnectionRefusedError("refused")  # no internet in tests: the public address answers nothing
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    settings.SKYPORT_ALLOWED_PRIVATE_NETWORKS = []
    image = images.image_import_url(actor=dennis, project=web, name="Rebound",
                                    url=f"http://images.rebind.test:{port}/disk.qcow2")
    images.image_download(image.pk)
    image.refresh_from_db()
    assert image.state == Image.State.FAILED
    assert hits == ["93.184.216.34"]  # the checked address, never the loopback one
    assert stored_files(image_store_dir) == []


@pytest.fixture
def http_files(tmp_path):
    from tests.catalog.test_image_import import _Server

    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    yield root, server.url
    server.stop()


# --- pushes of one image from the S3 store -------------------------------------------------------------------------
@pytest.mark.django_db(databases=["default", "sim"])
def test_s3_push_finishing_first_does_not_remove_the_file_another_push_reads(
        s3_store, sam, acme, dennis, web, disk, image_store_dir, monkeypatch, django_capture_on_commit_callbacks):
    from apps.catalog import images
    from apps.catalog.models import ImageCopy
    from apps.clouds import operations_tasks
    from apps.clouds import services as cloud_services
    from tests.catalog.conftest import connect, upload

    east, west = connect(sam, acme, "east"), connect(sam, acme, "west")
    for account in (east, west):
        cloud_services.grant_create(actor=sam, account=account, project=web)
    image = upload(dennis, web, disk("qcow2"), name="Shared file")
    real_run = operations_tasks.operation_run_and_follow
    held: list[int] = []

    def run(operation_id):
        from apps.clouds.models import Operation

        if Operation.objects.all_tenants().get(pk=operation_id).account_id == east.pk and not held:
            held.append(operation_id)  # the east push waits (another worker, a queue) with its file fetched
            return None
        return real_run(operation_id)

    monkeypatch.setattr(operations_tasks, "operation_run_and_follow", run)
    with django_capture_on_commit_callbacks(execute=True):
        east_copy, west_copy = images.image_push(actor=dennis, image=image,
                                                 targets=[(east, "region-1"), (west, "region-1")])
    west_copy.refresh_from_db()
    assert west_copy.state == ImageCopy.State.AVAILABLE, west_copy.error  # finished, its download released
    assert held
    real_run(held[0])
    east_copy.refresh_from_db()
    assert east_copy.state == ImageCopy.State.AVAILABLE, east_copy.error
    cache = image_store_dir / "s3-cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))  # both downloads released


# --- a consumer's item page shows the clouds of their project only -------------------------------------------------
@pytest.mark.parametrize("with_frame_project", [False, True])
def test_consumer_item_page_shows_only_clouds_of_their_project(client, connor, acme, web, dennis,
                                                              with_frame_project):
    from tests.catalog.pages_world import build_world
    from tests.catalog.test_profiles import make_account, make_flavor

    world = build_world(acme, web, dennis)
    hidden = make_account(acme, "secret-dc")  # granted to nobody: not the consumers' business
    make_flavor(hidden, "hidden-flavor", 1, 2048, price="0.001")
    client.force_login(connor)
    if with_frame_project:
        session = client.session
        session["project_id"] = web.pk
        session.save()
    page = client.get(f"/catalog/items/{world['for_web'].pk}/").content.decode()
    assert "sim-a" in page and "s1" in page
    assert "secret-dc" not in page and "hidden-flavor" not in page


# --- failures of the machine, not of the file ----------------------------------------------------------------------
def test_without_prlimit_qemu_img_never_runs_and_the_upload_is_refused(api, dennis, web, disk, monkeypatch,
                                                                      image_store_dir):
    import shutil

    from apps.catalog import qemu
    from apps.catalog.models import Image
    from tests.catalog.conftest import scratch_files, stored_files

    path = disk("qcow2")
    real_which = shutil.which
    monkeypatch.setattr(qemu.shutil, "which", lambda name: None if name == "prlimit" else real_which(name))
    started: list[object] = []
    monkeypatch.setattr(qemu.subprocess, "run", lambda *a, **k: started.append(a))
    before = Image.objects.all_tenants().count()
    with path.open("rb") as fileobj:
        response = api(dennis).post("/api/v1/images/upload/", {"project": web.pk, "name": "Unlimited",
                                                               "file": fileobj}, format="multipart")
    assert response.status_code == 400 and "prlimit is not installed" in str(response.json())
    assert started == [] and Image.objects.all_tenants().count() == before
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []


def test_full_image_store_is_a_refusal_without_server_paths(dennis, web, disk, monkeypatch, image_store_dir):
    import errno

    from apps.catalog import store
    from apps.catalog.models import Image
    from apps.core.permissions import ServiceError
    from tests.catalog.conftest import scratch_files, stored_files, upload

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(image_store_dir / "store" / "x"))

    monkeypatch.setattr(store.os, "replace", full)
    monkeypatch.setattr(store.shutil, "copyfile", full)
    before = Image.objects.all_tenants().count()
    with pytest.raises(ServiceError) as caught:
        upload(dennis, web, disk("qcow2"), name="No room")
    message = " ".join(caught.value.messages)
    assert "No space left on device" in message and str(image_store_dir) not in message
    assert Image.objects.all_tenants().count() == before
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []


@pytest.mark.django_db(databases=["default", "sim"])
def test_vmdk_master_is_pushed_stream_optimized(sam, acme, dennis, web, disk, monkeypatch, image_store_dir,
                                                django_capture_on_commit_callbacks):
    import json
    import subprocess

    from apps.catalog import images
    from apps.catalog.models import ImageCopy
    from apps.clouds import services as cloud_services
    from apps.clouds.drivers.sim import SimDriver
    from apps.clouds.models import Operation
    from tests.catalog.conftest import connect, upload

    east = connect(sam, acme, "east")
    cloud_services.grant_create(actor=sam, account=east, project=web)
    monkeypatch.setattr(SimDriver, "image_formats", ("vmdk", "raw"))  # what EC2 takes, best first
    image = upload(dennis, web, disk("vmdk", "4M", "-o", "subformat=monolithicSparse", fill=True), name="Sparse")
    assert image.disk_format == "vmdk"
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    copy.refresh_from_db()
    assert (copy.state, copy.disk_format) == (ImageCopy.State.AVAILABLE, "vmdk"), copy.error
    sent = Operation.objects.all_tenants().get(pk=copy.operation_id).params["path"]
    assert sent.endswith("/disk.vmdk")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vmdk", sent], check=True,
                                     capture_output=True).stdout)
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"


@pytest.mark.django_db(databases=["default", "sim"])
def test_push_waiting_an_hour_for_a_snapshot_import_keeps_waiting(sam, acme, dennis, web, disk, monkeypatch,
                                                                  django_capture_on_commit_callbacks):
    import datetime

    from django.utils import timezone

    from apps.catalog import images
    from apps.catalog.models import ImageCopy
    from apps.clouds import services as cloud_services
    from apps.clouds.drivers.base import CloudDriver, ImagePending
    from apps.clouds.drivers.sim import SimDriver
    from apps.clouds.models import Operation
    from apps.clouds.operations_tasks import operations_resume
    from tests.catalog.conftest import connect, upload

    east = connect(sam, acme, "east")
    cloud_services.grant_create(actor=sam, account=east, project=web)
    image = upload(dennis, web, disk("qcow2"), name="Slow import")

    def image_step(self, step, upload, state):
        if step == "upload":
            return CloudDriver.image_step(self, step, upload, state)
        raise ImagePending("EC2 snapshot import: converting", progress=30)

    monkeypatch.setattr(SimDriver, "image_steps", ("upload", "wait_snapshot"))
    monkeypatch.setattr(SimDriver, "image_step", image_step)
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    operation = Operation.objects.all_tenants().get(pk=ImageCopy.objects.all_tenants().get(pk=copy.pk).operation_id)
    an_hour_ago = (timezone.now() - datetime.timedelta(minutes=70)).isoformat()
    Operation.objects.all_tenants().filter(pk=operation.pk).update(
        next_attempt_at=None, result={**operation.result, "waiting_since": an_hour_ago})
    with django_capture_on_commit_callbacks(execute=True):
        operations_resume()
    operation.refresh_from_db()
    copy.refresh_from_db()
    assert operation.state == Operation.State.PENDING, operation.error
    assert (copy.state, copy.progress, copy.error) == (ImageCopy.State.UPLOADING, 30, "")


# --- the import page streams with the size limit too -----------------------------------------------------------
@pytest.mark.parametrize("csrf_checks", [False, True])
def test_page_upload_over_the_limit_is_dropped_while_it_arrives(client, dennis, web, tmp_path, settings,
                                                                monkeypatch, image_store_dir, csrf_checks):
    from django.core.files.uploadhandler import TemporaryFileUploadHandler
    from django.test import Client

    from apps.catalog.models import Image
    from tests.catalog.conftest import stored_files

    settings.SKYPORT_IMAGE_MAX_BYTES = 64 * 1024
    kept: list[int] = []
    real_receive = TemporaryFileUploadHandler.receive_data_chunk

    def receive(self, raw_data, start):
        kept.append(len(raw_data))
        return real_receive(self, raw_data, start)

    monkeypatch.setattr(TemporaryFileUploadHandler, "receive_data_chunk", receive)
    big = tmp_path / "big.raw"
    big.write_bytes(bytes(range(256)) * 4096 * 4)  # 4 MiB
    browser = Client(enforce_csrf_checks=csrf_checks)
    browser.force_login(dennis)
    token = ""
    if csrf_checks:
        page = browser.get("/catalog/images/import/")
        token = page.context["csrf_token"] if page.context else browser.cookies["csrftoken"].value
    with big.open("rb") as f:
        response = browser.post("/catalog/images/import/", {
            "csrfmiddlewaretoken": token, "source": "upload", "project": web.pk, "name": "Too big", "arch": "x86_64",
            "file": f,
        })
    assert response.status_code == 400
    assert "The file is larger than the limit of 65536 bytes." in response.content.decode()
    assert sum(kept) <= 64 * 1024  # the rest was never written anywhere
    assert not Image.objects.all_tenants().filter(name="Too big").exists() and stored_files(image_store_dir) == []


def test_page_import_still_checks_csrf(dennis, web):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(dennis)
    response = browser.post("/catalog/images/import/", {"source": "url", "project": web.pk, "name": "No token",
                                                        "url": "https://example.org/disk.qcow2"})
    assert response.status_code == 403


@pytest.mark.django_db(databases=["default", "sim"])
def test_unexpected_error_preparing_a_push_fails_the_copy_so_it_can_be_retried(
        sam, acme, dennis, web, disk, monkeypatch, django_capture_on_commit_callbacks):
    from apps.catalog import images, qemu
    from apps.catalog.models import ImageCopy
    from apps.clouds import services as cloud_services
    from apps.clouds.drivers.sim import SimDriver
    from tests.catalog.conftest import connect, upload

    east = connect(sam, acme, "east")
    cloud_services.grant_create(actor=sam, account=east, project=web)
    image = upload(dennis, web, disk("qcow2"), name="Flaky")
    monkeypatch.setattr(SimDriver, "image_formats", ("raw",))
    real_convert = qemu.convert

    def broken(*args, **kwargs):
        raise RuntimeError("/srv/secret/path exploded")

    monkeypatch.setattr(qemu, "convert", broken)
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.FAILED and "RuntimeError" in copy.error and "/srv" not in copy.error
    monkeypatch.setattr(qemu, "convert", real_convert)
    with django_capture_on_commit_callbacks(execute=True):
        images.image_copy_retry(actor=dennis, copy=copy)
    copy.refresh_from_db()
    assert (copy.state, copy.attempts) == (ImageCopy.State.AVAILABLE, 2), copy.error


def test_unexpected_error_during_a_url_import_fails_the_image(dennis, web, disk, http_files, monkeypatch,
                                                             image_store_dir):
    from apps.catalog import images
    from apps.catalog.models import Image
    from tests.catalog.conftest import scratch_files, stored_files

    root, base = http_files
    (root / "disk.qcow2").write_bytes(disk("qcow2").read_bytes())
    image = images.image_import_url(actor=dennis, project=web, name="Crash", url=f"{base}/disk.qcow2")

    def broken(path, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(images.qemu, "inspect", broken)
    images.image_download(image.pk)
    image.refresh_from_db()
    assert image.state == Image.State.FAILED and "MemoryError" in image.error
    assert stored_files(image_store_dir) == [] and scratch_files(image_store_dir) == []


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\ufffe"])
def test_control_characters_in_a_blueprint_are_an_issue_with_their_line(api, client, dennis, web, catalog, char):  # noqa: F811
    source = EXAMPLE.replace("db:\n", f"d{char}b:\n")
    response = api(dennis).post(f"{BLUEPRINTS}validate/", {"source": source, "project": web.pk}, format="json")
    assert response.status_code == 200
    issues = response.json()["issues"]
    assert response.json()["valid"] is False and [(i["line"], i["column"]) for i in issues] == [(18, 4)]
    assert "control character" in issues[0]["message"]
    client.force_login(dennis)
    page = client.post("/catalog/blueprints/new/", {"project": web.pk, "name": "Odd", "source": source + "\x00"})
    assert page.status_code == 400 and "control character" in page.content.decode()
    assert not web.blueprints.filter(name="Odd").exists()


# --- the S3 image store: failures are refusals without secrets ---------------------------------------------------
def test_s3_upload_to_a_missing_bucket_is_a_refusal_without_secrets(moto_server, settings, dennis, web, disk,
                                                                   image_store_dir):
    from apps.catalog.models import Image
    from apps.core.permissions import ServiceError
    from tests.catalog.conftest import scratch_files, upload

    settings.SKYPORT_IMAGE_STORE = "s3"
    settings.SKYPORT_IMAGE_S3_ENDPOINT = moto_server.url
    settings.SKYPORT_IMAGE_S3_BUCKET = "no-such-bucket"
    settings.SKYPORT_IMAGE_S3_ACCESS_KEY = "AKIASECRETLOOKING"
    settings.SKYPORT_IMAGE_S3_SECRET_KEY = "very-secret-value"
    moto_server.set_auth(False)
    before = Image.objects.all_tenants().count()
    with pytest.raises(ServiceError) as caught:
        upload(dennis, web, disk("qcow2"), name="Nowhere")
    message = " ".join(caught.value.messages)
    assert "NoSuchBucket" in message and "no-such-bucket" in message
    assert "very-secret-value" not in message and "AKIASECRETLOOKING" not in message
    assert str(image_store_dir) not in message
    assert Image.objects.all_tenants().count() == before and scratch_files(image_store_dir) == []


# --- EC2: the S3 endpoint option obeys the outbound rules ---------------------------------------------------------
@pytest.mark.parametrize("address", ["http://169.254.169.254/", "http://10.1.2.3:9000/"])
def test_ec2_image_s3_endpoint_option_is_checked_before_anything_is_signed(acme, moto_ec2_kind, moto_ec2, tmp_path,
                                                                          settings, monkeypatch, address):
    import socket

    from tests.clouds.test_ec2_image_import import BUCKET, aws, make_account, push, run

    aws(moto_ec2, "s3").create_bucket(Bucket=BUCKET)
    settings.SKYPORT_INSTALLATION_ID = "inst-test"
    path = tmp_path / "web.raw"
    path.write_bytes(b"\x01" * 4096)
    account = make_account(acme, moto_ec2_kind, image_bucket=BUCKET, image_s3_endpoint=address)
    dialled: list[object] = []
    real_connect = socket.create_connection

    def spy(target, *args, **kwargs):
        dialled.append(target)
        return real_connect(target, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    op = run(push(account, str(path), disk_format="raw"))
    assert (op.state, op.error_kind) == ("failed", "invalid_request")
    assert "image_s3_endpoint is refused" in op.error and moto_ec2.secret_access_key not in op.error
    host = address.split("//")[1].split(":")[0].rstrip("/")
    assert all(host not in str(t) for t in dialled)


def test_preview_refuses_user_data_that_would_grow_past_the_limit(api, dennis, web, catalog):  # noqa: F811
    refs = "{{ motd }}\n" * 1400  # 15 400 characters as written: within the limit
    source = textwrap.dedent("""\
        version: 1
        parameters:
          motd: {type: string, default: "hi"}
        servers:
          web:
            image: Debian 12
            profile: small
            user_data: |
        """) + textwrap.indent(refs, "      ")
    spec, issues = validate_blueprint(source, organization=web.organization)
    assert spec is not None, issues
    fine = blueprint_preview(spec, organization=web.organization, parameters={"motd": "x" * 5})
    assert not any("user_data" in p for p in fine.problems) and fine.instances[0].user_data.count("xxxxx") == 1400
    response = api(dennis).post(f"{BLUEPRINTS}preview/", {"source": source, "project": web.pk,
                                                          "parameters": {"motd": "y" * 20_000}}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is False
    assert any("web: user_data would be" in p and "at most 16384" in p for p in body["problems"]), body["problems"]
    huge = blueprint_preview(spec, organization=web.organization, parameters={"motd": "y" * 20_000})
    assert huge.instances[0].user_data == ""


@pytest.mark.django_db(databases=["default", "sim"])
def test_s3_push_resumed_on_another_worker_fetches_the_file_again(
        s3_store, sam, acme, dennis, web, disk, image_store_dir, monkeypatch, django_capture_on_commit_callbacks):
    import shutil

    from apps.catalog import images
    from apps.catalog.models import ImageCopy
    from apps.clouds import operations_tasks
    from apps.clouds import services as cloud_services
    from tests.catalog.conftest import connect, upload

    east = connect(sam, acme, "east")
    cloud_services.grant_create(actor=sam, account=east, project=web)
    image = upload(dennis, web, disk("qcow2"), name="Moved")
    real_run = operations_tasks.operation_run_and_follow
    held: list[int] = []
    monkeypatch.setattr(operations_tasks, "operation_run_and_follow", lambda operation_id: held.append(operation_id))
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    assert held
    shutil.rmtree(image_store_dir / "s3-cache")  # the worker that started the push is gone, with its local files
    real_run(held[0])
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.AVAILABLE, copy.error
    cache = image_store_dir / "s3-cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


@pytest.mark.django_db(databases=["default", "sim"])
def test_push_resumed_when_the_stored_file_is_gone_fails_with_a_reason(
        sam, acme, dennis, web, disk, image_store_dir, monkeypatch, django_capture_on_commit_callbacks):
    from apps.catalog import images
    from apps.catalog.models import ImageCopy
    from apps.clouds import operations_tasks
    from apps.clouds import services as cloud_services
    from tests.catalog.conftest import connect, upload

    east = connect(sam, acme, "east")
    cloud_services.grant_create(actor=sam, account=east, project=web)
    image = upload(dennis, web, disk("qcow2"), name="Lost")
    real_run = operations_tasks.operation_run_and_follow
    held: list[int] = []
    monkeypatch.setattr(operations_tasks, "operation_run_and_follow", lambda operation_id: held.append(operation_id))
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    (image_store_dir / "store" / image.store_key).unlink()
    real_run(held[0])
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.FAILED and "cannot be read here" in copy.error
    assert str(image_store_dir) not in copy.error


# --- odd payloads on every catalog endpoint: a 400, never a 500, nothing written ---------------------------------
ODD = ["x", "", None, [], {}, [1], {"a": 1}, 10**30, -1, 1.5, True, "\x00", "\x01", "9" * 5000]


def test_odd_payloads_never_fail_the_server(api, dennis, mallory, acme, web, ops):
    from apps.catalog.models import Blueprint, CatalogItem, HardwareProfile, Image, ImageShare
    from tests.catalog.pages_world import build_world

    w = build_world(acme, web, dennis)
    image, item = w["debian"].pk, w["for_web"].pk
    posts = {
        "/api/v1/images/": {"project": web.pk, "name": "x", "url": "https://example.com/a.img"},
        "/api/v1/images/import-provider/": {"project": web.pk, "name": "y", "cloud_image": 1},
        f"/api/v1/images/{image}/push/": {"targets": [{"account": w["account"].pk, "region": "region-9"}]},
        f"/api/v1/images/{image}/shares/": {"project": ops.pk},
        "/api/v1/hardware-profiles/": {"organization": acme.pk, "name": "Z", "vcpus": 1, "ram_mb": 1024},
        "/api/v1/blueprints/": {"project": web.pk, "name": "bp", "source": "version: 1"},
        f"/api/v1/blueprints/{w['blueprint'].pk}/versions/": {"source": "version: 1"},
        "/api/v1/blueprints/validate/": {"source": "version: 1"},
        "/api/v1/blueprints/preview/": {"version": w["v2"].pk, "project": ops.pk, "parameters": {}},
        "/api/v1/catalog-items/": {"project": web.pk, "name": "it", "kind": "image", "image": image,
                                   "profile": w["small"].pk, "publish_to": [ops.pk]},
        f"/api/v1/catalog-items/{item}/publish/": {"projects": [ops.pk]},
        f"/api/v1/catalog-items/{item}/unpublish/": {"project": ops.pk},
    }
    patches = {
        f"/api/v1/images/{image}/": {"name": "n", "min_disk_gb": 1, "arch": "x86_64"},
        f"/api/v1/hardware-profiles/{w['small'].pk}/": {"vcpus": 2, "ram_mb": 2048, "gpus": 0},
        f"/api/v1/blueprints/{w['blueprint'].pk}/": {"name": "n"},
        f"/api/v1/catalog-items/{item}/": {"image": image, "profile": w["medium"].pk,
                                           "approval_threshold_monthly": "1", "blueprint_version": None},
    }

    def rows() -> list[int]:
        return [model.objects.all_tenants().count() for model in (Image, ImageShare, HardwareProfile, Blueprint,
                                                                  CatalogItem)]

    # the payloads name Globex's project where one is writable: refused (4xx) and nothing written
    before = rows()
    for url in [u for u, base in posts.items() if ops.pk in base.values() or [ops.pk] in base.values()]:
        response = api(dennis).post(url, posts[url], format="json")
        assert 400 <= response.status_code < 500, (url, response.status_code)
    assert rows() == before
    failures = []
    for who in (dennis, mallory):
        client = api(who)
        for url, base in posts.items():
            for key in base:
                for odd in ODD:
                    response = client.post(url, {**base, key: odd}, format="json")
                    if response.status_code >= 500:
                        failures.append((who.username, url, key, str(odd)[:20], response.status_code))
        for url, base in patches.items():
            for key in base:
                for odd in ODD:
                    response = client.patch(url, {key: odd}, format="json")
                    if response.status_code >= 500:
                        failures.append((who.username, url, key, str(odd)[:20], response.status_code))
    assert failures == []

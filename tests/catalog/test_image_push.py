"""Pushing an image to several cloud accounts: one copy per account-region, conversion done once per format, the
push run through the Operation protocol with its progress on the copy, and a failed copy retried alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied

from apps.catalog import images, qemu
from apps.catalog.models import Image, ImageCopy
from apps.clouds import services as cloud_services
from apps.clouds.drivers.base import CloudDriver, ImagePending
from apps.clouds.drivers.sim import SimDriver
from apps.clouds.models import CloudImage, Operation
from apps.clouds.operations_tasks import operations_resume
from apps.clouds.sim.services import sim_call_count, sim_cloud, sim_fault_add
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from tests.catalog.conftest import connect, needs_qemu, stored_files, upload
from tests.clouds.accounts_world import DBS

pytestmark = [pytest.mark.django_db(databases=DBS), needs_qemu]


@pytest.fixture
def clouds(sam, acme, web):
    """Two sim accounts granted to web (all regions), one not granted to anybody."""
    east = connect(sam, acme, "east")
    west = connect(sam, acme, "west")
    spare = connect(sam, acme, "spare")
    for account in (east, west):
        cloud_services.grant_create(actor=sam, account=account, project=web)
    return east, west, spare


@pytest.fixture
def image(dennis, web, disk) -> Image:
    return upload(dennis, web, disk("qcow2", "32M", fill=True))


def pushed_images(account, image_pk: int) -> list[dict]:
    rows = sim_cloud(account.endpoint).images
    return [i for i in rows if (i.get("tags") or {}).get("skyport:image") == str(image_pk)]


def copy_events(live_events, copy_pk):
    return [e for e in live_events if e["event"] == "image_copy" and e["id"] == copy_pk]


def test_push_to_two_accounts(dennis, image, clouds, live_events, django_capture_on_commit_callbacks):
    east, west, _ = clouds
    with django_capture_on_commit_callbacks(execute=True):
        copies = images.image_push(actor=dennis, image=image, targets=[(east, "region-1"), (west, "region-2")])
    assert len(copies) == 2
    for copy, account, region in zip(copies, (east, west), ("region-1", "region-2"), strict=True):
        copy.refresh_from_db()
        assert copy.state == ImageCopy.State.AVAILABLE, copy.error
        assert (copy.account_id, copy.region, copy.disk_format, copy.progress, copy.attempts) == (
            account.pk, region, "qcow2", 100, 1)
        provider = pushed_images(account, image.pk)
        assert [p["id"] for p in provider] == [copy.provider_image_id]
        assert provider[0]["disk_format"] == "qcow2" and provider[0]["region"] == region
        assert provider[0]["size_bytes"] == image.size_bytes
        operation = Operation.objects.all_tenants().get(pk=copy.operation_id)
        assert (operation.kind, operation.state) == ("push_image", Operation.State.SUCCEEDED)
        assert operation.idempotency_key == f"push-image-{copy.pk}-1"
        assert operation.params["tags"] == {"skyport:image": str(image.pk)}
        assert CloudImage.objects.all_tenants().filter(account=account, region=region,
                                                       provider_id=copy.provider_image_id).exists()
        states = [e["state"] for e in copy_events(live_events, copy.pk)]
        assert states[0] == "pending" and "uploading" in states and states[-1] == "available"
    assert AuditEvent.objects.all_tenants().filter(verb="image.push", object_id=str(image.pk)).count() == 1


def test_push_again_leaves_available_and_active_copies_alone(dennis, image, clouds,
                                                             django_capture_on_commit_callbacks):
    east, west, _ = clouds
    with django_capture_on_commit_callbacks(execute=True):
        first = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    first.refresh_from_db()
    calls = sim_call_count(east.endpoint, "upload_image")
    operations = Operation.objects.all_tenants().filter(kind="push_image").count()
    with django_capture_on_commit_callbacks(execute=True):
        again = images.image_push(actor=dennis, image=image, targets=[(east, "region-1"), (east, "region-1")])
    assert [c.pk for c in again] == [first.pk]
    again[0].refresh_from_db()
    assert (again[0].attempts, again[0].updated_at) == (1, first.updated_at)
    assert Operation.objects.all_tenants().filter(kind="push_image").count() == operations
    assert sim_call_count(east.endpoint, "upload_image") == calls
    # an active copy is not restarted either
    ImageCopy.objects.all_tenants().filter(pk=first.pk).update(state=ImageCopy.State.UPLOADING)
    with django_capture_on_commit_callbacks(execute=True):
        images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])
    assert Operation.objects.all_tenants().filter(kind="push_image").count() == operations
    assert len(pushed_images(east, image.pk)) == 1


def test_conversion_happens_once_for_two_accounts(dennis, image, clouds, monkeypatch, image_store_dir, live_events,
                                                  django_capture_on_commit_callbacks):
    east, west, _ = clouds
    monkeypatch.setattr(SimDriver, "image_formats", ("raw",))
    conversions = []
    real_convert = qemu.convert

    def counting(src, src_format, dst, dst_format, progress_cb=None, **kwargs):
        conversions.append((src_format, dst_format))
        return real_convert(src, src_format, dst, dst_format, progress_cb, **kwargs)

    monkeypatch.setattr(qemu, "convert", counting)
    with django_capture_on_commit_callbacks(execute=True):
        copies = images.image_push(actor=dennis, image=image, targets=[(east, "region-1"), (west, "region-1")])
    assert conversions == [("qcow2", "raw")]
    for copy, account in zip(copies, (east, west), strict=True):
        copy.refresh_from_db()
        assert (copy.state, copy.disk_format) == (ImageCopy.State.AVAILABLE, "raw"), copy.error
        assert pushed_images(account, image.pk)[0]["disk_format"] == "raw"
        assert copy.size_bytes == 32 * 1024 * 1024  # the raw file, not the qcow2 master
    converting = [e for e in copy_events(live_events, copies[0].pk) if e["state"] == "converting"]
    assert converting and converting[-1]["progress"] == 100
    names = sorted(p.name for p in stored_files(image_store_dir))
    assert names == ["disk.raw", "master.qcow2"]


def test_failed_conversion_fails_the_copy_with_the_reason(dennis, image, clouds, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    east, _, _ = clouds
    monkeypatch.setattr(SimDriver, "image_formats", ("vhd",))
    monkeypatch.setattr(qemu.settings, "SKYPORT_IMAGE_CONVERT_MEMORY_BYTES", 20 * 1024 * 1024)
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.FAILED
    assert "Could not convert" in copy.error and "/tmp" not in copy.error
    assert copy.operation_id is None
    assert pushed_images(east, image.pk) == []


def test_retry_pushes_only_the_failed_copy(dennis, image, clouds, django_capture_on_commit_callbacks):
    east, west, _ = clouds
    sim_fault_add(west.endpoint, kind="error", method="upload_image", error="invalid", times=1,
                  message="The simulated cloud refused the image (disk too large for the region).")
    with django_capture_on_commit_callbacks(execute=True):
        good, bad = images.image_push(actor=dennis, image=image, targets=[(east, "region-1"), (west, "region-1")])
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.state == ImageCopy.State.AVAILABLE
    assert bad.state == ImageCopy.State.FAILED
    assert "disk too large" in bad.error
    assert pushed_images(west, image.pk) == []
    good_id, good_updated, east_calls = good.provider_image_id, good.updated_at, sim_call_count(east.endpoint)

    with pytest.raises(ServiceError, match="Only a failed copy"):
        images.image_copy_retry(actor=dennis, copy=good)
    with django_capture_on_commit_callbacks(execute=True):
        images.image_copy_retry(actor=dennis, copy=bad)
    bad.refresh_from_db()
    good.refresh_from_db()
    assert bad.state == ImageCopy.State.AVAILABLE, bad.error
    assert bad.attempts == 2 and bad.error == ""
    assert Operation.objects.all_tenants().get(pk=bad.operation_id).idempotency_key == f"push-image-{bad.pk}-2"
    assert (good.provider_image_id, good.updated_at, good.attempts) == (good_id, good_updated, 1)
    assert sim_call_count(east.endpoint) == east_calls  # the available copy's cloud was not called
    assert [p["id"] for p in pushed_images(west, image.pk)] == [bad.provider_image_id]
    assert [p["id"] for p in pushed_images(east, image.pk)] == [good_id]
    assert AuditEvent.objects.all_tenants().filter(verb="image_copy.retry", object_id=str(bad.pk)).exists()


def test_push_waiting_for_the_provider_shows_progress_then_finishes(dennis, image, clouds, monkeypatch,
                                                                    django_capture_on_commit_callbacks):
    east, _, _ = clouds
    waits = []

    def image_step(self, step, upload, state):
        if step == "upload":
            return CloudDriver.image_step(self, step, upload, state)
        waits.append(step)
        if len(waits) == 1:
            raise ImagePending("the import task", progress=40)
        return {"image_id": state["image_id"]}

    monkeypatch.setattr(SimDriver, "image_steps", ("upload", "wait_active"))
    monkeypatch.setattr(SimDriver, "image_step", image_step)
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    copy.refresh_from_db()
    assert (copy.state, copy.progress) == (ImageCopy.State.UPLOADING, 40)
    operation = Operation.objects.all_tenants().get(pk=copy.operation_id)
    assert operation.state == Operation.State.PENDING
    Operation.objects.all_tenants().filter(pk=operation.pk).update(next_attempt_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert operations_resume() >= 1
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.AVAILABLE and copy.provider_image_id == pushed_images(east, image.pk)[0]["id"]
    assert len(pushed_images(east, image.pk)) == 1


def test_push_needs_a_grant_for_the_project(dennis, image, clouds, django_capture_on_commit_callbacks):
    _, _, spare = clouds
    with pytest.raises(ServiceError) as caught:
        images.image_push(actor=dennis, image=image, targets=[(spare, "region-1")])
    assert "not granted" in str(caught.value)
    assert not ImageCopy.objects.all_tenants().filter(image=image).exists()
    assert sim_call_count(spare.endpoint, "upload_image") == 0


def test_cloud_admin_may_push_to_any_account(sam, image, clouds, django_capture_on_commit_callbacks):
    _, _, spare = clouds
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=sam, image=image, targets=[(spare, "region-2")])[0]
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.AVAILABLE


@pytest.mark.parametrize("who", ["connor", "vera", "sarah"])
def test_push_needs_change_rights(who, personas, image, clouds):
    east, _, _ = clouds
    with pytest.raises(PermissionDenied):
        images.image_push(actor=personas[who], image=image, targets=[(east, "region-1")])
    assert not ImageCopy.objects.all_tenants().filter(image=image).exists()


def test_push_of_an_image_not_ready_is_refused(dennis, image, clouds):
    east, _, _ = clouds
    Image.objects.all_tenants().filter(pk=image.pk).update(state=Image.State.IMPORTING)
    image.refresh_from_db()
    with pytest.raises(ServiceError, match="only a ready image"):
        images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])


def test_push_targets(dennis, sam, connor, image, clouds, django_assert_max_num_queries):
    east, west, spare = clouds
    with django_assert_max_num_queries(6):
        targets = images.push_targets(dennis, image)
    assert {(a.name, r) for a, r in targets} == {
        ("east", "region-1"), ("east", "region-2"), ("west", "region-1"), ("west", "region-2")}
    assert ("spare", "region-1") in {(a.name, r) for a, r in images.push_targets(sam, image)}
    assert images.push_targets(connor, image) == []


def test_push_from_the_s3_store(s3_store, dennis, web, disk, clouds, image_store_dir,
                                django_capture_on_commit_callbacks):
    east, _, _ = clouds
    image = upload(dennis, web, disk("qcow2"), name="From S3")
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])[0]
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.AVAILABLE, copy.error
    assert pushed_images(east, image.pk)[0]["size_bytes"] == image.size_bytes
    cache = Path(image_store_dir) / "s3-cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))  # the download was released


# --- EC2 (moto), VM Import answered at the driver's importer seam ---------------------------------------------------
@pytest.fixture
def ec2_account(acme, moto_ec2_kind, monkeypatch, settings):
    from tests.clouds.moto_adapter import MotoEC2Driver
    from tests.clouds.test_ec2_image_import import BUCKET, FakeImporter, aws, make_account

    settings.SKYPORT_INSTALLATION_ID = "inst-catalog"
    aws(moto_ec2_kind, "s3").create_bucket(Bucket=BUCKET)
    importer = FakeImporter(moto_ec2_kind)
    monkeypatch.setattr(MotoEC2Driver, "image_importer", importer)
    return make_account(acme, moto_ec2_kind, image_bucket=BUCKET), importer


def test_push_to_ec2_converts_to_vmdk_and_follows_the_import(sam, image, ec2_account, moto_ec2_kind,
                                                             django_capture_on_commit_callbacks):
    from tests.clouds.test_ec2_image_import import aws

    account, importer = ec2_account
    # spaces in the name and description (sent as %20 by the test adapter, see tests/clouds/moto_adapter.py)
    Image.objects.all_tenants().filter(pk=image.pk).update(name="Debian 12", version="v2", description="A Debian")
    image.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=sam, image=image, targets=[(account, "us-east-1")])[0]
    copy.refresh_from_db()
    assert (copy.state, copy.disk_format, copy.progress) == (ImageCopy.State.UPLOADING, "vmdk", 30), copy.error
    [start] = importer.starts
    assert start["disk_format"] == "vmdk" and start["object_size"] == copy.size_bytes
    body = aws(moto_ec2_kind, "s3").get_object(Bucket=start["bucket"], Key=start["key"])["Body"].read()
    assert body[:4] == b"KDMV"  # the converted streamOptimized VMDK went to S3, not the qcow2 master
    for expected in (80, 100):
        Operation.objects.all_tenants().filter(pk=copy.operation_id).update(next_attempt_at=None)
        with django_capture_on_commit_callbacks(execute=True):
            operations_resume()
        copy.refresh_from_db()
        if expected == 80:
            assert (copy.state, copy.progress) == (ImageCopy.State.UPLOADING, 80)
    assert copy.state == ImageCopy.State.AVAILABLE, copy.error
    [ami] = aws(moto_ec2_kind, "ec2").describe_images(ImageIds=[copy.provider_image_id])["Images"]
    assert ami["ImageId"].startswith("ami-")
    assert ami["Name"].startswith("Debian 12 v2") and ami["Description"] == "A Debian"


# --- OpenStack (the real stack on loopback: -m openstack) -------------------------------------------------------------
@pytest.fixture
def openstack_account(acme, openstack_stack):
    from apps.clouds.models import CloudAccount

    account = CloudAccount(
        organization=acme, name="OpenStack dev", slug="openstack-dev", kind="openstack",
        endpoint=openstack_stack.auth_url, regions=[openstack_stack.region], default_region=openstack_stack.region,
        options={"project_name": openstack_stack.project, "user_domain_name": openstack_stack.domain,
                 "project_domain_name": openstack_stack.domain},
    )
    account.set_credentials({"username": openstack_stack.username, "password": openstack_stack.password},
                           secret_field="password")
    account.save()
    conn = openstack_stack.driver().conn
    before = {i.id for i in conn.image.images()}
    yield account
    for glance_image in conn.image.images():
        if glance_image.id not in before:
            conn.image.delete_image(glance_image.id, ignore_missing=True)


@pytest.mark.openstack
def test_openstack_upload_step_is_safe_to_run_again(openstack_stack, disk, openstack_account):
    from apps.clouds.drivers.base import ImageUpload

    driver = openstack_stack.driver()
    path = disk("qcow2", "16M", fill=True)
    tags = {"skyport:image": "0", "skyport:installation": "catalog-test", "skyport:operation": "os-retry-1"}
    upload = ImageUpload(name="skyport-catalog-test", path=str(path), disk_format="qcow2", tags=tags)
    first = driver.image_step("upload", upload, {})
    again = driver.image_step("upload", upload, {})  # a retry after a crash finds the first upload
    assert first == again
    assert driver.find_image(tags=tags).id == first["image_id"]
    state = dict(first)
    for _ in range(120):
        try:
            done = driver.image_step("wait_active", upload, state)
            break
        except ImagePending as pending:
            assert "glance status" in pending.waiting_for
            import time

            time.sleep(0.5)
    else:
        raise AssertionError("the image never became active")
    assert done["image_id"] == first["image_id"]


@pytest.mark.openstack
def test_push_to_openstack(sam, image, openstack_account, openstack_stack, django_capture_on_commit_callbacks):
    import time

    with django_capture_on_commit_callbacks(execute=True):
        copy = images.image_push(actor=sam, image=image, targets=[(openstack_account, openstack_stack.region)])[0]
    for _ in range(120):
        copy.refresh_from_db()
        if not copy.is_active:
            break
        Operation.objects.all_tenants().filter(pk=copy.operation_id).update(next_attempt_at=None)
        time.sleep(0.5)
        with django_capture_on_commit_callbacks(execute=True):
            operations_resume()
    assert copy.state == ImageCopy.State.AVAILABLE, copy.error
    assert copy.disk_format == "qcow2"  # glance takes the master file as it is
    glance_image = openstack_stack.driver().conn.image.get_image(copy.provider_image_id)
    assert glance_image.status == "active" and glance_image.disk_format == "qcow2"
    assert f"skyport:image={image.pk}" in glance_image.tags
    operation = Operation.objects.all_tenants().get(pk=copy.operation_id)
    assert operation.steps == ["image:upload", "image:wait_active"]


def test_a_transient_provider_error_shows_on_the_copy_while_it_is_retried(dennis, image, clouds,
                                                                          django_capture_on_commit_callbacks):
    east, _, _ = clouds
    sim_fault_add(east.endpoint, kind="error", method="upload_image", error="transient", times=1,
                  message="The simulated cloud is briefly unavailable.")
    with django_capture_on_commit_callbacks(execute=True):
        [copy] = images.image_push(actor=dennis, image=image, targets=[(east, "region-1")])
    copy.refresh_from_db()
    assert copy.state == ImageCopy.State.UPLOADING
    assert copy.error.startswith("Retrying after:") and "briefly unavailable" in copy.error
    Operation.objects.all_tenants().filter(pk=copy.operation_id).update(next_attempt_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        operations_resume()
    copy.refresh_from_db()
    assert (copy.state, copy.error) == (ImageCopy.State.AVAILABLE, "")
    assert len(pushed_images(east, image.pk)) == 1

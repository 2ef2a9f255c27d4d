"""EC2 image pushes through the Operation protocol against moto: the disk really goes to S3, the AMI is really
registered and tagged from a real snapshot. moto has no VM Import (ImportSnapshot and DescribeImportSnapshotTasks
answer HTTP 500), so those two calls are answered by `FakeImporter` at the driver's ImageImporter seam; the last test
shows what the product importer does against moto."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import boto3
import pytest
from django.utils import timezone

from apps.clouds.drivers.base import AuthError, ImageUpload, InvalidRequestError, QuotaError, TransientError
from apps.clouds.drivers.libcloud_driver import ImageImporter, ImportStatus, ami_name, client_token
from apps.clouds.models import CloudAccount, Operation
from apps.clouds.operations import TAG_INSTALLATION, TAG_OPERATION, operation_run, operation_start
from tests.clouds.fixtures_moto import MOTO_ACCOUNT_ID
from tests.clouds.moto_adapter import MotoEC2Driver

pytestmark = pytest.mark.django_db

BUCKET = "skyport-vm-import"
INSTALLATION = "inst-test"
TASK_ID = "import-snap-0123456789abcdef0"
STEPS = ["image:s3_upload", "image:import_snapshot", "image:wait_snapshot", "image:register_image"]


def aws(moto_ec2, service):
    return boto3.client(
        service,
        endpoint_url=moto_ec2.endpoint,
        region_name=moto_ec2.region,
        aws_access_key_id=moto_ec2.access_key_id,
        aws_secret_access_key=moto_ec2.secret_access_key,
    )


class FakeImporter(ImageImporter):
    """VM Import as AWS answers it: the task runs (progress 30, then 80), then completes with a snapshot, which is a
    real moto snapshot of a real volume, so RegisterImage references something that exists; or ends "deleted"."""

    def __init__(self, moto_ec2, *, progress=(30, 80), fail_message=None):
        self.moto_ec2 = moto_ec2
        self.progress = list(progress)
        self.fail_message = fail_message
        self.starts: list[dict] = []
        self.polls = 0
        self.snapshot_id: str | None = None

    def start_import_snapshot(self, driver, *, bucket, key, disk_format, description, client_token, tags):
        # what VM Import would read: the object must really be in S3, complete
        head = aws(self.moto_ec2, "s3").head_object(Bucket=bucket, Key=key)
        self.starts.append(
            {
                "bucket": bucket,
                "key": key,
                "disk_format": disk_format,
                "client_token": client_token,
                "tags": dict(tags),
                "object_size": head["ContentLength"],
                "role": driver.image_role,
            }
        )
        return TASK_ID

    def describe_import_snapshot(self, driver, task_id):
        assert task_id == TASK_ID
        self.polls += 1
        if self.polls <= len(self.progress):
            return ImportStatus(state="active", progress=self.progress[self.polls - 1], message="converting")
        if self.fail_message:
            return ImportStatus(state="deleted", message=self.fail_message)
        if self.snapshot_id is None:
            ec2 = aws(self.moto_ec2, "ec2")
            volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
            self.snapshot_id = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
        return ImportStatus(state="completed", progress=100, snapshot_id=self.snapshot_id, message="completed")


@pytest.fixture
def installation(settings):
    settings.SKYPORT_INSTALLATION_ID = INSTALLATION
    return INSTALLATION


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "web.vmdk"
    subprocess.run(
        ["/usr/bin/qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", str(path), "64M"],
        check=True,
    )
    return str(path)


@pytest.fixture
def bucket(moto_ec2):
    aws(moto_ec2, "s3").create_bucket(Bucket=BUCKET)
    return BUCKET


def make_account(acme, moto_ec2, **options):
    account = CloudAccount(
        organization=acme,
        name="EC2 moto",
        slug="ec2-moto",
        kind="ec2",
        endpoint=moto_ec2.endpoint,
        regions=["us-east-1"],
        default_region="us-east-1",
        options=options,
    )
    account.set_credentials(moto_ec2.credentials, secret_field="secret_key")
    account.save()
    return account


@pytest.fixture
def account(acme, moto_ec2_kind, bucket, installation):
    return make_account(acme, moto_ec2_kind, image_bucket=BUCKET)


@pytest.fixture
def importer(moto_ec2, monkeypatch):
    fake = FakeImporter(moto_ec2)
    monkeypatch.setattr(MotoEC2Driver, "image_importer", fake)
    return fake


def push(account, disk, key="push-1", **params):
    return operation_start(
        account=account,
        region="us-east-1",
        kind="push_image",
        params={"name": "web", "path": disk, "disk_format": "vmdk", "arch": "x86_64", **params},
        idempotency_key=key,
    )


def run(op):
    Operation.objects.all_tenants().filter(pk=op.pk).update(next_attempt_at=None)  # the park delays it
    operation_run(op.pk, worker_id="t")
    op.refresh_from_db()
    return op


def own_images(moto_ec2):
    return aws(moto_ec2, "ec2").describe_images(Owners=["self"])["Images"]


def s3_keys(moto_ec2):
    return [o["Key"] for o in aws(moto_ec2, "s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])]


# --- the whole push -------------------------------------------------------------------------------------------------


def test_push_uploads_to_s3_imports_waits_and_registers_a_tagged_ami(account, importer, disk, moto_ec2):
    before = {i["ImageId"] for i in own_images(moto_ec2)}
    op = push(account, disk)
    assert op.steps == STEPS
    key = f"skyport/{INSTALLATION}/{op.pk}/web.vmdk"

    op = run(op)  # upload, start the import, first look at the task: parked
    assert (op.state, op.steps[op.step], op.attempt) == ("pending", "image:wait_snapshot", 0)
    assert op.result["progress"] == 30
    assert op.result["s3_bucket"] == BUCKET and op.result["s3_key"] == key
    assert op.result["import_task_id"] == TASK_ID
    assert op.next_attempt_at >= timezone.now() + datetime.timedelta(seconds=10)
    [start] = importer.starts
    assert start == {
        "bucket": BUCKET,
        "key": key,
        "disk_format": "vmdk",
        "client_token": client_token(f"skyport-{INSTALLATION}-{op.pk}-import-snapshot"),
        "tags": {TAG_INSTALLATION: INSTALLATION, TAG_OPERATION: str(op.pk)},
        "object_size": os.path.getsize(disk),
        "role": "vmimport",
    }
    body = aws(moto_ec2, "s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == Path(disk).read_bytes() and body[:4] == b"KDMV"

    op = run(op)
    assert (op.state, op.steps[op.step], op.result["progress"]) == ("pending", "image:wait_snapshot", 80)
    assert "converting" in op.result["waiting_for"]

    op = run(op)
    assert op.state == "succeeded", op.error
    assert op.result["snapshot_id"] == importer.snapshot_id
    image_id = op.result["image_id"]
    assert image_id.startswith("ami-") and image_id not in before
    [image] = aws(moto_ec2, "ec2").describe_images(ImageIds=[image_id])["Images"]
    assert image["Name"] == f"web-{op.pk}" == op.result["image_name"]
    assert image["OwnerId"] == MOTO_ACCOUNT_ID
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags == {TAG_INSTALLATION: INSTALLATION, TAG_OPERATION: str(op.pk), "Name": "web"}
    [snapshot] = aws(moto_ec2, "ec2").describe_snapshots(SnapshotIds=[importer.snapshot_id])["Snapshots"]
    assert {t["Key"]: t["Value"] for t in snapshot["Tags"]}[TAG_OPERATION] == str(op.pk)
    assert {i["ImageId"] for i in own_images(moto_ec2)} == before | {image_id}
    assert s3_keys(moto_ec2) == [key]  # kept unless image_delete_uploads is set
    assert len(importer.starts) == 1 and importer.polls == 3

    found = MotoEC2Driver(credentials=moto_ec2.credentials, region="us-east-1", endpoint=moto_ec2.endpoint).find_image(
        tags={TAG_OPERATION: str(op.pk)}
    )
    assert found is not None and found.id == image_id and found.name == f"web-{op.pk}"


def test_crash_after_register_finds_the_first_ami_instead_of_registering_another(account, importer, disk, moto_ec2):
    op = push(account, disk)
    for _ in range(3):
        op = run(op)
    assert op.state == "succeeded"
    images = own_images(moto_ec2)
    # the worker died after RegisterImage, before the step was committed: the step runs again
    lost = {k: v for k, v in op.result.items() if k not in ("image_id", "image_name")}
    Operation.objects.all_tenants().filter(pk=op.pk).update(
        state="running",
        step=3,
        result=lost,
        lease_owner="dead",
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1),
        finished_at=None,
    )
    again = run(op)
    assert again.state == "succeeded" and again.result["image_id"] == op.result["image_id"]
    assert len(own_images(moto_ec2)) == len(images)
    assert len(importer.starts) == 1


def test_register_reuses_an_untagged_ami_left_by_a_crash_before_tagging(moto_ec2, bucket, importer):
    ec2 = aws(moto_ec2, "ec2")
    snapshot = ec2.create_snapshot(VolumeId=ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"])
    # RegisterImage went through, CreateTags never ran
    first = ec2.register_image(Name="web-77")["ImageId"]
    count = len(own_images(moto_ec2))
    driver = moto_ec2.driver(image_bucket=BUCKET)
    upload = ImageUpload(
        name="web", path="/unused", disk_format="vmdk", tags={TAG_INSTALLATION: "i", TAG_OPERATION: "77"}
    )
    state = {"snapshot_id": snapshot["SnapshotId"]}
    assert driver.image_step("register_image", upload, state)["image_id"] == first
    assert driver.image_step("register_image", upload, state)["image_id"] == first
    assert len(own_images(moto_ec2)) == count
    [image] = ec2.describe_images(ImageIds=[first])["Images"]
    assert {t["Key"]: t["Value"] for t in image["Tags"]}[TAG_OPERATION] == "77"


def test_an_ami_of_the_same_name_from_another_installation_is_not_taken(moto_ec2, bucket, importer):
    ec2 = aws(moto_ec2, "ec2")
    other = ec2.register_image(Name="web-77")["ImageId"]
    ec2.create_tags(Resources=[other], Tags=[{"Key": TAG_INSTALLATION, "Value": "someone-else"}])
    upload = ImageUpload(
        name="web", path="/unused", disk_format="vmdk", tags={TAG_INSTALLATION: "i", TAG_OPERATION: "77"}
    )
    with pytest.raises(InvalidRequestError, match="another Skyport installation"):
        moto_ec2.driver(image_bucket=BUCKET).image_step("register_image", upload, {"snapshot_id": "snap-1"})


def test_delete_uploads_option_removes_the_s3_object_once_registered(
    acme, moto_ec2_kind, bucket, installation, disk, importer, moto_ec2
):
    account = make_account(acme, moto_ec2, image_bucket=BUCKET, image_delete_uploads=True, image_role="my-import")
    op = push(account, disk)
    for _ in range(3):
        op = run(op)
    assert op.state == "succeeded" and op.result["image_id"]
    assert importer.starts[0]["role"] == "my-import"
    assert s3_keys(moto_ec2) == []


# --- refusals and failures ------------------------------------------------------------------------------------------


def test_missing_bucket_option_fails_clearly_and_uploads_nothing(
    acme, moto_ec2_kind, bucket, installation, disk, importer, moto_ec2
):
    account = make_account(acme, moto_ec2)
    op = run(push(account, disk))
    assert (op.state, op.error_kind, op.step) == ("failed", "invalid_request", 0)
    assert op.error == "Set option image_bucket on the EC2 account to the S3 bucket VM Import reads from."
    assert s3_keys(moto_ec2) == [] and importer.starts == []


def test_import_task_deleted_by_ec2_fails_with_its_status_message(account, importer, disk, moto_ec2):
    importer.fail_message = "ClientError: Disk validation failed [Unsupported VMDK File Format]"
    importer.progress = [10]
    before = len(own_images(moto_ec2))
    op = run(push(account, disk))
    assert (op.state, op.result["progress"]) == ("pending", 10)
    op = run(op)
    assert (op.state, op.error_kind) == ("failed", "invalid_request")
    assert op.steps[op.step] == "image:wait_snapshot"
    assert "Disk validation failed [Unsupported VMDK File Format]" in op.error
    assert "image_id" not in op.result and len(own_images(moto_ec2)) == before


def test_missing_s3_bucket_is_a_readable_refusal(acme, moto_ec2_kind, installation, disk, importer, moto_ec2):
    account = make_account(acme, moto_ec2, image_bucket="no-such-bucket")
    op = run(push(account, disk))
    assert (op.state, op.error_kind) == ("failed", "invalid_request")
    assert op.error.startswith("The S3 bucket 'no-such-bucket' (option image_bucket of the EC2 account) does not exist")
    assert moto_ec2.secret_access_key not in op.error and importer.starts == []


def test_wrong_secret_is_an_auth_error_without_the_secret(
    acme, moto_ec2_kind, bucket, installation, disk, importer, moto_ec2
):
    account = make_account(acme, moto_ec2, image_bucket=BUCKET)
    wrong = dict(moto_ec2.credentials, secret_key="wrong-secret-" + moto_ec2.secret_access_key[13:])
    account.set_credentials(wrong, secret_field="secret_key")
    account.save()
    op = run(push(account, disk))
    assert (op.state, op.error_kind) == ("failed", "auth")
    assert op.error.startswith("EC2 rejected the access key")
    assert wrong["secret_key"] not in op.error and s3_keys(moto_ec2) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"disk_format": "qcow2"}, "EC2 imports vmdk, raw, vhd disks, not 'qcow2'."),
        ({"arch": "ppc64le"}, "EC2 has no 'ppc64le' images: choose x86_64 or arm64."),
    ],
)
def test_what_ec2_cannot_import_is_refused_before_any_upload(account, importer, disk, moto_ec2, params, message):
    op = run(push(account, disk, **params))
    assert (op.state, op.error_kind, op.error) == ("failed", "invalid_request", message)
    assert s3_keys(moto_ec2) == [] and importer.starts == []


def test_upload_retry_skips_an_object_already_complete(moto_ec2, bucket, disk):
    driver = moto_ec2.driver(image_bucket=BUCKET)
    upload = ImageUpload(name="web", path=disk, disk_format="vmdk", tags={TAG_INSTALLATION: "i", TAG_OPERATION: "5"})
    first = driver.image_step("s3_upload", upload, {})
    assert first == {"s3_bucket": BUCKET, "s3_key": "skyport/i/5/web.vmdk", "s3_bytes": os.path.getsize(disk)}

    def no_second_upload(*args, **kwargs):
        raise AssertionError("uploaded again")

    driver.aws_client("s3").upload_file = no_second_upload
    assert driver.image_step("s3_upload", upload, {}) == first
    # a task id already committed: the import is not started again
    assert driver.image_step("import_snapshot", upload, {**first, "import_task_id": TASK_ID}) == {}


def test_single_shot_upload_points_to_the_push_operation(moto_ec2):
    with pytest.raises(InvalidRequestError, match="EC2 imports an image in steps"):
        moto_ec2.driver(image_bucket=BUCKET).upload_image(ImageUpload(name="x", path="/x.vmdk", disk_format="vmdk"))


def test_ami_names_follow_ec2_rules():
    assert ami_name("web", "12") == "web-12"
    assert ami_name("Ubuntu 24.04 (noble) — web*", "12") == "Ubuntu 24.04 (noble) - web--12"
    assert ami_name("x") == "skyport-x"
    long = ami_name("a" * 300, "123456")
    assert len(long) == 128 and long.endswith("-123456")


# --- the product importer against moto -------------------------------------------------------------------------------


def test_product_importer_against_moto_is_a_typed_retryable_error_without_credentials(account, disk, moto_ec2):
    """moto answers ImportSnapshot and DescribeImportSnapshotTasks with an HTML 500 page: the product importer turns
    that into a TransientError, the operation backs off and retries; nothing in the message is a credential."""
    op = run(push(account, disk))
    assert (op.state, op.steps[op.step], op.error_kind) == ("pending", "image:import_snapshot", "transient")
    assert op.attempt == 1
    assert op.error == "EC2 sent an unreadable response while starting the snapshot import (a provider-side error)."
    assert s3_keys(moto_ec2) == [f"skyport/{INSTALLATION}/{op.pk}/web.vmdk"]  # the upload step was committed

    driver = moto_ec2.driver(image_bucket=BUCKET)
    with pytest.raises(TransientError) as caught:
        driver.image_importer.describe_import_snapshot(driver, TASK_ID)
    for text in (str(caught.value), repr(caught.value.args)):
        assert moto_ec2.secret_access_key not in text and moto_ec2.access_key_id not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_retried_import_start_sends_the_same_client_token(account, importer, disk, moto_ec2):
    """AWS answers a repeated ClientToken with the task it started the first time; the token is derived from the
    operation, so a worker that dies after ImportSnapshot, before committing the task id, sends the same one again."""
    op = run(push(account, disk))
    Operation.objects.all_tenants().filter(pk=op.pk).update(
        state="running",
        step=1,
        result={k: v for k, v in op.result.items() if k not in ("import_task_id", "progress", "waiting_for")},
        lease_owner="dead",
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1),
    )
    op = run(op)
    assert (op.state, op.result["import_task_id"]) == ("pending", TASK_ID)
    first, second = importer.starts
    assert first["client_token"] == second["client_token"] and first["key"] == second["key"]


# --- the product importer's requests (botocore's Stubber checks them against the EC2 API model) -----------------------


def stubbed(moto_ec2):
    from botocore.stub import Stubber

    driver = moto_ec2.driver(image_bucket=BUCKET)
    stubber = Stubber(driver.aws_client("ec2"))
    stubber.activate()
    return driver, stubber


OURS = {TAG_INSTALLATION: INSTALLATION, TAG_OPERATION: "9"}
START = {
    "bucket": BUCKET,
    "key": "skyport/inst-test/9/web.vmdk",
    "disk_format": "vmdk",
    "description": "web",
    "client_token": "tok-9",
    "tags": OURS,
}


def test_product_importer_starts_import_snapshot_with_bucket_role_token_and_tags(moto_ec2):
    driver, stubber = stubbed(moto_ec2)
    other = [{"Key": TAG_INSTALLATION, "Value": INSTALLATION}, {"Key": TAG_OPERATION, "Value": "8"}]
    stubber.add_response(
        "describe_import_snapshot_tasks",
        {"ImportSnapshotTasks": [{"ImportTaskId": "import-snap-other", "Tags": other}]},
        {"MaxResults": 100},
    )
    stubber.add_response(
        "import_snapshot",
        {"ImportTaskId": "import-snap-new"},
        {
            "ClientToken": "tok-9",
            "Description": "web",
            "DiskContainer": {
                "Description": "web",
                "Format": "VMDK",
                "UserBucket": {"S3Bucket": BUCKET, "S3Key": "skyport/inst-test/9/web.vmdk"},
            },
            "RoleName": "vmimport",
            "TagSpecifications": [
                {"ResourceType": "import-snapshot-task", "Tags": [{"Key": k, "Value": v} for k, v in OURS.items()]}
            ],
        },
    )
    assert driver.image_importer.start_import_snapshot(driver, **START) == "import-snap-new"
    stubber.assert_no_pending_responses()


def test_product_importer_answers_the_task_an_earlier_attempt_started(moto_ec2):
    driver, stubber = stubbed(moto_ec2)
    tags = [{"Key": k, "Value": v} for k, v in OURS.items()]
    stubber.add_response(
        "describe_import_snapshot_tasks",
        {"ImportSnapshotTasks": [], "NextToken": "p2"},
        {"MaxResults": 100},
    )
    stubber.add_response(
        "describe_import_snapshot_tasks",
        {
            "ImportSnapshotTasks": [
                {"ImportTaskId": "import-snap-failed", "Tags": tags, "SnapshotTaskDetail": {"Status": "deleted"}},
                {"ImportTaskId": "import-snap-live", "Tags": tags, "SnapshotTaskDetail": {"Status": "active"}},
            ]
        },
        {"MaxResults": 100, "NextToken": "p2"},
    )
    # no import_snapshot response is queued: a second start would fail the Stubber
    assert driver.image_importer.start_import_snapshot(driver, **START) == "import-snap-live"
    stubber.assert_no_pending_responses()


def test_product_importer_reads_the_task_detail(moto_ec2):
    driver, stubber = stubbed(moto_ec2)
    for detail in (
        {"Status": "active", "Progress": "42", "StatusMessage": "converting"},
        {"Status": "completed", "SnapshotId": "snap-0abc", "StatusMessage": "completed"},
    ):
        stubber.add_response(
            "describe_import_snapshot_tasks",
            {"ImportSnapshotTasks": [{"ImportTaskId": TASK_ID, "SnapshotTaskDetail": detail}]},
            {"ImportTaskIds": [TASK_ID]},
        )
    assert driver.image_importer.describe_import_snapshot(driver, TASK_ID) == ImportStatus(
        state="active", progress=42, message="converting"
    )
    assert driver.image_importer.describe_import_snapshot(driver, TASK_ID) == ImportStatus(
        state="completed", snapshot_id="snap-0abc", message="completed"
    )


@pytest.mark.parametrize(
    ("code", "status", "error", "text"),
    [
        ("InvalidParameter", 400, InvalidRequestError, "The service role vmimport provided does not exist"),
        ("RequestLimitExceeded", 503, TransientError, "Skyport will retry"),
        ("ResourceLimitExceeded", 400, QuotaError, "EC2 quota reached"),
        ("UnauthorizedOperation", 403, AuthError, "lack permission for starting the snapshot import"),
    ],
)
def test_product_importer_maps_ec2_errors(moto_ec2, code, status, error, text):
    driver, stubber = stubbed(moto_ec2)
    stubber.add_response("describe_import_snapshot_tasks", {"ImportSnapshotTasks": []}, {"MaxResults": 100})
    stubber.add_client_error(
        "import_snapshot",
        service_error_code=code,
        service_message=f"The service role vmimport provided does not exist (key {moto_ec2.secret_access_key})",
        http_status_code=status,
    )
    with pytest.raises(error, match=text) as caught:
        driver.image_importer.start_import_snapshot(driver, **START)
    assert moto_ec2.secret_access_key not in str(caught.value)


@pytest.mark.parametrize(("min_disk_gb", "volume_size"), [(0, None), (1, None), (8, "8")])
def test_register_image_request_describes_the_imported_disk(
    account, importer, disk, moto_ec2, monkeypatch, min_disk_gb, volume_size
):
    """moto ignores RegisterImage's architecture and block device mapping, so the request itself is checked: the
    root volume is the imported snapshot (gp3, deleted with the instance), made bigger only when min_disk_gb asks for
    more than the snapshot's 1 GiB."""
    sent = []
    real = MotoEC2Driver._ec2

    def recording(self, params):
        sent.append(dict(params))
        return real(self, params)

    monkeypatch.setattr(MotoEC2Driver, "_ec2", recording)
    op = push(account, disk, arch="aarch64", min_disk_gb=min_disk_gb)
    for _ in range(3):
        op = run(op)
    assert op.state == "succeeded", op.error
    [register] = [p for p in sent if p["Action"] == "RegisterImage"]
    assert register == {
        "Action": "RegisterImage",
        "Name": f"web-{op.pk}",
        "Description": "web",
        "Architecture": "arm64",
        "RootDeviceName": "/dev/xvda",
        "VirtualizationType": "hvm",
        "EnaSupport": "true",
        "BlockDeviceMapping.1.DeviceName": "/dev/xvda",
        "BlockDeviceMapping.1.Ebs.SnapshotId": importer.snapshot_id,
        "BlockDeviceMapping.1.Ebs.VolumeType": "gp3",
        "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true",
        **({"BlockDeviceMapping.1.Ebs.VolumeSize": volume_size} if volume_size else {}),
    }

"""Deleting an image at the provider: the driver call on the sim, EC2 (moto) and OpenStack, and the `delete_image`
operation, which treats an image already gone as done."""

from __future__ import annotations

import pytest

from apps.clouds.drivers.base import ImageUpload, NotFoundError
from apps.clouds.drivers.sim import SimDriver
from apps.clouds.models import CloudAccount, Operation
from apps.clouds.operations import operation_run, operation_start
from apps.clouds.sim.services import sim_call_count, sim_cloud_create
from tests.clouds.fixtures_sim import SIM_DATABASES
from tests.clouds.moto_adapter import MotoEC2Driver
from tests.clouds.test_ec2_image_import import aws

EP, KEY = "sim://image-delete", "sim-image-delete-key-01"


@pytest.fixture
def sim_account(acme):
    sim_cloud_create(EP, api_key=KEY, seed=5, regions=["r1"], frozen_clock=True)
    account = CloudAccount(organization=acme, name="Del sim", slug="del-sim", kind="sim", endpoint=EP,
                           regions=["r1"], default_region="r1")
    account.set_credentials({"api_key": KEY}, secret_field="api_key")
    account.save()
    return account


@pytest.mark.django_db(databases=SIM_DATABASES, transaction=True)
def test_delete_image_operation_removes_the_sim_image_and_a_second_run_is_harmless(sim_account, tmp_path):
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * 1024)
    driver = SimDriver(credentials={"api_key": KEY}, region="r1", endpoint=EP)
    image = driver.upload_image(ImageUpload(name="gone", path=str(disk), disk_format="raw"))
    others = {i.id for i in driver.list_images()} - {image.id}

    op = operation_start(account=sim_account, region="r1", kind="delete_image", params={"image_id": image.id},
                         idempotency_key="del-1")
    assert op.steps == ["delete_image"]
    op = operation_run(op.pk, worker_id="w")
    assert op.state == Operation.State.SUCCEEDED
    assert {i.id for i in driver.list_images()} == others
    with pytest.raises(NotFoundError):
        driver.delete_image(image.id)

    # deleting what is already gone succeeds (a retried delete after a crash)
    again = operation_start(account=sim_account, region="r1", kind="delete_image", params={"image_id": image.id},
                            idempotency_key="del-2")
    calls = sim_call_count(EP, "delete_image")
    assert operation_run(again.pk, worker_id="w").state == Operation.State.SUCCEEDED
    assert sim_call_count(EP, "delete_image") == calls + 1


@pytest.mark.django_db
def test_ec2_delete_image_deregisters_the_ami_and_deletes_its_snapshot(moto_ec2):
    ec2 = aws(moto_ec2, "ec2")
    ami = ec2.register_image(Name="to-delete", RootDeviceName="/dev/sda1")["ImageId"]
    keep = ec2.register_image(Name="to-keep", RootDeviceName="/dev/sda1")["ImageId"]
    [image] = ec2.describe_images(ImageIds=[ami])["Images"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
    assert snapshots  # moto gives every registered image a root snapshot, as AWS images have

    driver = MotoEC2Driver(credentials=moto_ec2.credentials, region="us-east-1", endpoint=moto_ec2.endpoint)
    before = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    driver.delete_image(ami)
    assert {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]} == before - {ami}
    assert keep in before
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not set(snapshots) & left
    with pytest.raises(NotFoundError):
        driver.delete_image(ami)

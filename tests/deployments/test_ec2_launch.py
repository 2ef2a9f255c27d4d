"""A launch through the pipeline on EC2: the product's libcloud EC2 driver against moto's EC2 server on loopback
(IAM checks on). Create → running with an address, stop/start, delete → terminated, nothing left allocated."""

from __future__ import annotations

import pytest

from apps.accounts.models import SshKey
from apps.catalog.models import CatalogItem, CatalogPublication, HardwareProfile, Image, ImageCopy
from apps.clouds.models import CloudGrant
from apps.clouds.services import sync_account
from apps.deployments import services
from apps.deployments.models import QuotaReservation
from tests.clouds.fixtures_moto import HARNESS_AMIS, moto_ec2, moto_ec2_kind, moto_iam_client, moto_server  # noqa: F401
from tests.clouds.test_ec2_image_import import make_account
from tests.deployments.test_launch import launch

pytestmark = pytest.mark.django_db


def new_public_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def boto(moto_ec2, service="ec2"):  # noqa: F811
    import boto3

    return boto3.client(service, endpoint_url=moto_ec2.endpoint, region_name=moto_ec2.region,
                        aws_access_key_id=moto_ec2.access_key_id, aws_secret_access_key=moto_ec2.secret_access_key)


@pytest.fixture
def ec2_item(acme, web, dennis, moto_ec2_kind):  # noqa: F811
    account = make_account(acme, moto_ec2_kind)
    result = sync_account(account=account)
    assert result.ok, result
    CloudGrant.objects.create(organization=acme, account=account, project=web)
    ami = HARNESS_AMIS[0]
    image = Image.objects.create(organization=acme, project=web, name="Ubuntu", version="22.04", os="Ubuntu",
                                 source=Image.Source.UPLOAD, state=Image.State.READY, disk_format="raw",
                                 approval=Image.Approval.APPROVED, arch="x86_64")
    ImageCopy.objects.create(organization=acme, image=image, account=account, region="us-east-1",
                             state=ImageCopy.State.AVAILABLE, provider_image_id=ami["ami_id"])
    profile = HardwareProfile.objects.create(organization=acme, name="small", slug="small", vcpus=1, ram_mb=1024)
    item = CatalogItem.objects.create(organization=acme, project=web, name="Ubuntu on EC2", slug="ubuntu-ec2",
                                      kind=CatalogItem.Kind.IMAGE, image=image, profile=profile)
    CatalogPublication.objects.create(organization=acme, item=item, project=web)
    return account, item


def settle_now(django_capture_on_commit_callbacks, rounds=40):
    import time

    from apps.clouds.models import Operation
    from tests.deployments.conftest import run_due_operations

    for _ in range(rounds):
        with django_capture_on_commit_callbacks(execute=True):
            run_due_operations()
        if not Operation.objects.all_tenants().filter(state__in=["pending", "running"]).exists():
            return
        time.sleep(0.1)  # moto moves pending → running on the next describe
    raise AssertionError("operations still pending")


def test_launch_stop_start_delete_on_ec2(connor, web, ec2_item, moto_ec2, settings,  # noqa: F811
                                         django_capture_on_commit_callbacks):
    account, item = ec2_item
    settings.SKYPORT_INSTALLATION_ID = "inst-ec2-test"
    key = SshKey.objects.create(user=connor, name="laptop", public_key=new_public_key(), fingerprint="SHA256:x")
    deployment, created = launch(connor, web, item, "on-ec2", django_capture_on_commit_callbacks,
                                 account=account, ssh_key=key.pk)
    assert created and deployment.policy == "account"
    settle_now(django_capture_on_commit_callbacks)
    [instance] = deployment.instances.all()
    assert instance.state == "running" and instance.provider_server_id.startswith("i-")
    ec2 = boto(moto_ec2)
    [reservation] = ec2.describe_instances(InstanceIds=[instance.provider_server_id])["Reservations"]
    described = reservation["Instances"][0]
    assert described["State"]["Name"] == "running" and described["InstanceType"] == instance.flavor_id
    tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
    assert tags["skyport:deployment"] == str(deployment.pk) and tags["skyport:installation"] == "inst-ec2-test"
    # the key went in as the deployment's own key pair
    key_name = f"skyport-inst-ec2-test-d{deployment.pk}"
    assert described["KeyName"] == key_name
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == [key_name]
    # port 22 opened by the deployment's own security group
    [group] = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [
        f"skyport-inst-ec2-test-d{deployment.pk}-server"]}])["SecurityGroups"]
    assert [g["GroupId"] for g in described["SecurityGroups"]] == [group["GroupId"]]
    assert [(p["FromPort"], p["IpRanges"][0]["CidrIp"]) for p in group["IpPermissions"]] == [(22, "0.0.0.0/0")]

    with django_capture_on_commit_callbacks(execute=True):
        services.instance_action(actor=connor, instance=instance, action="stop")
    settle_now(django_capture_on_commit_callbacks)
    instance.refresh_from_db()
    assert instance.state == "stopped"
    with django_capture_on_commit_callbacks(execute=True):
        services.instance_action(actor=connor, instance=instance, action="start")
    settle_now(django_capture_on_commit_callbacks)
    instance.refresh_from_db()
    assert instance.state == "running"

    with django_capture_on_commit_callbacks(execute=True):
        services.deployment_delete(actor=connor, deployment=deployment)
    settle_now(django_capture_on_commit_callbacks)
    deployment.refresh_from_db()
    assert deployment.state == "deleted"
    states = [i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert states and set(states) == {"terminated"}
    assert ec2.describe_addresses()["Addresses"] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    left = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"]
    assert left == []
    assert QuotaReservation.objects.all_tenants().get(deployment=deployment).released_at is not None

"""Harness fixtures (see tests/clouds/conftest.py): moto's EC2 server on loopback, driven by the product EC2 driver.

One ThreadedMotoServer per test session (per xdist worker), on 127.0.0.1 with a port the OS picks; every test that
uses it starts from `/moto-api/reset`. moto does not check credentials by default; these fixtures turn its IAM checks
on (INITIAL_NO_AUTH_ACTION_COUNT = 0 through /moto-api/reset-auth) after creating an IAM user with an access key,
so a wrong secret is really refused (AuthFailure) the way AWS refuses it.

moto's EC2 validations (unknown AMI, instance type, key pair) are off by default and are read from the environment
when moto is imported, so they are set before the import (and on moto.settings, in case something imported moto
earlier). The AMI catalogue is replaced by a few images (HARNESS_AMIS): loading moto's default 1300 takes seconds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from apps.clouds.drivers.base import NotFoundError, Server, ServerState
from tests.clouds.harness import Harness

MOTO_ACCOUNT_ID = "123456789012"  # moto's default account: images owned by it are "self" images
HARNESS_AMIS = [
    {
        "ami_id": "ami-0a5c3558529277641",
        "name": "skyport-ubuntu-22.04-x86_64",
        "description": "Ubuntu 22.04 for the driver tests",
        "owner_id": MOTO_ACCOUNT_ID,
        "public": False,
        "state": "available",
        "architecture": "x86_64",
        "platform": None,
        "image_location": "skyport/ubuntu",
        "image_type": "machine",
        "root_device_type": "ebs",
        "root_device_name": "/dev/sda1",
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "sriov": "simple",
    },
    {
        "ami_id": "ami-0b7e2a1c9d4f60a12",
        "name": "skyport-debian-12-arm64",
        "description": "Debian 12 arm64 for the driver tests",
        "owner_id": MOTO_ACCOUNT_ID,
        "public": False,
        "state": "available",
        "architecture": "arm64",
        "platform": None,
        "image_location": "skyport/debian",
        "image_type": "machine",
        "root_device_type": "ebs",
        "root_device_name": "/dev/sda1",
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "sriov": "simple",
    },
    {
        "ami_id": "ami-760aaa0f",
        "name": "amzn-ami-hvm-2017.09.1.20171103-x86_64-gp2",
        "description": "Amazon Linux AMI (a public image of another owner)",
        "owner_id": "137112412989",
        "public": True,
        "state": "available",
        "architecture": "x86_64",
        "platform": None,
        "image_location": "amazon/amzn-ami-hvm-2017.09.1.20171103-x86_64-gp2",
        "image_type": "machine",
        "root_device_type": "ebs",
        "root_device_name": "/dev/xvda",
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "sriov": "simple",
    },
]
HARNESS_IMAGE_ID = HARNESS_AMIS[0]["ami_id"]
HARNESS_REGION = "us-east-1"
ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@dataclass
class MotoServer:
    url: str

    def post(self, path: str, data: bytes = b"") -> bytes:
        request = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # loopback only
            return response.read()

    def set_auth(self, on: bool) -> None:
        self.post("/moto-api/reset-auth", b"0" if on else b"inf")

    def reset(self) -> None:
        self.post("/moto-api/reset")


@dataclass
class MotoEC2:
    """A freshly reset moto with IAM checks on and one IAM user allowed everything."""

    server: MotoServer
    access_key_id: str
    secret_access_key: str
    region: str = HARNESS_REGION

    @property
    def endpoint(self) -> str:
        return self.server.url

    @property
    def credentials(self) -> dict[str, str]:
        return {"access_key": self.access_key_id, "secret_key": self.secret_access_key}

    def driver(self, *, credentials: dict[str, str] | None = None, region: str | None = None, **options: Any) -> Any:
        from tests.clouds.moto_adapter import MotoEC2Driver

        return MotoEC2Driver(
            credentials=credentials or self.credentials,
            region=region or self.region,
            endpoint=self.endpoint,
            options=options,
        )


def _configure_moto(amis_path: str) -> None:
    values = {
        "MOTO_ENABLE_AMI_VALIDATION": "true",
        "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
        "MOTO_ENABLE_KEYPAIR_VALIDATION": "true",
        "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
        "MOTO_AMIS_PATH": amis_path,
    }
    already_imported = "moto" in sys.modules
    os.environ.update(values)
    import moto.settings

    if already_imported:  # moto read the environment before us: set what it reads at call time
        moto.settings.ENABLE_AMI_VALIDATION = True
        moto.settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION = True
        moto.settings.ENABLE_KEYPAIR_VALIDATION = True
        if "moto.ec2.models.amis" in sys.modules:
            sys.modules["moto.ec2.models.amis"].AMIS = json.loads(json.dumps(HARNESS_AMIS))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    amis_path = tmp_path_factory.mktemp("moto") / "amis.json"
    amis_path.write_text(json.dumps(HARNESS_AMIS))
    _configure_moto(str(amis_path))
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    server = MotoServer(url=f"http://{host}:{port}")
    try:
        yield server
    finally:
        server.set_auth(False)
        srv.stop()


@pytest.fixture(scope="session")
def moto_iam_client(moto_server: MotoServer) -> Any:
    import boto3

    # IAM calls are made while the checks are off, so this client's own keys do not matter
    return boto3.client(
        "iam",
        endpoint_url=moto_server.url,
        region_name=HARNESS_REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )


@pytest.fixture
def moto_ec2(moto_server: MotoServer, moto_iam_client: Any) -> Any:
    """moto reset to empty (plus HARNESS_AMIS and the default VPC), with IAM checks on for the test's duration."""
    moto_server.set_auth(False)
    moto_server.reset()
    moto_iam_client.create_user(UserName="skyport")
    moto_iam_client.put_user_policy(UserName="skyport", PolicyName="everything", PolicyDocument=ALLOW_ALL)
    key = moto_iam_client.create_access_key(UserName="skyport")["AccessKey"]
    moto_server.set_auth(True)
    try:
        yield MotoEC2(server=moto_server, access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"])
    finally:
        moto_server.set_auth(False)


@pytest.fixture
def moto_ec2_kind(moto_ec2: MotoEC2, monkeypatch: pytest.MonkeyPatch) -> MotoEC2:
    """Points the registry's "ec2" kind at the moto-adapted driver, for tests that build drivers from accounts."""
    from apps.clouds import drivers

    monkeypatch.setitem(drivers.DRIVER_PATHS, "ec2", "tests.clouds.moto_adapter.MotoEC2Driver")
    return moto_ec2


def _waiter(driver: Any) -> Any:
    def wait(server_id: str, states: set[ServerState]) -> Server:
        # moto has no delays (the next describe already shows the end state); a short poll covers pending → running
        last: Server | None = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                last = driver.get_server(server_id)
            except NotFoundError:
                if ServerState.DELETED in states:
                    return Server(id=server_id, name="", state=ServerState.DELETED)
                raise
            if last.state in states:
                return last
            time.sleep(0.05)
        raise AssertionError(f"{server_id} never reached {sorted(states)}; last seen {last.state if last else None}")

    return wait


@pytest.fixture
def ec2_harness(moto_ec2: MotoEC2) -> Harness:
    driver = moto_ec2.driver()
    wrong = dict(moto_ec2.credentials, secret_key="wrong-" + moto_ec2.secret_access_key[6:])
    return Harness(
        kind="ec2",
        driver=driver,
        image_id=HARNESS_IMAGE_ID,
        size_id="t3.micro",
        other_size_id="t3.small",
        network_id=None,
        wait=_waiter(driver),
        bad_credentials_driver=moto_ec2.driver(credentials=wrong),
    )

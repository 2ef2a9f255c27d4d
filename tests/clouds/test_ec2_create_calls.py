"""EC2 calls of a create, seen at the connection: a server created into a security group that ensure_firewall
made goes out as one RunInstances, with no DescribeSecurityGroups before it (the group is named in the request)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest

from apps.clouds.drivers.base import CreateServer, ServerState
from tests.clouds.fixtures_moto import HARNESS_IMAGE_ID

pytestmark = pytest.mark.django_db


def _recording(driver: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    actions: list[str] = []
    connection = driver.node_driver.connection
    original = connection.request

    def request(action: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        found = (params or {}).get("Action") if isinstance(params, dict) else None
        if found is None and isinstance(kwargs.get("data"), str):
            found = (parse_qs(kwargs["data"]).get("Action") or [None])[0]
        actions.append(str(found))
        return original(action, params, *args, **kwargs)

    monkeypatch.setattr(connection, "request", request)
    return actions


def test_create_in_a_named_group_sends_run_instances_only(ec2_harness, moto_ec2, monkeypatch):
    driver = ec2_harness.driver
    group_id = driver.ensure_firewall("bench-web", [{"port": 22, "cidr": "0.0.0.0/0"}], tags={})
    actions = _recording(driver, monkeypatch)
    server = driver.create_server(CreateServer(name="web-1", image_id=HARNESS_IMAGE_ID, size_id="t3.micro",
                                               firewall_id=group_id, firewall_name="bench-web"))
    assert actions == ["RunInstances"]
    described = ec2_harness.wait(server.id, {ServerState.RUNNING})
    assert described.state == ServerState.RUNNING
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=moto_ec2.endpoint, region_name=moto_ec2.region,
                       aws_access_key_id=moto_ec2.access_key_id, aws_secret_access_key=moto_ec2.secret_access_key)
    [reservation] = ec2.describe_instances(InstanceIds=[server.id])["Reservations"]
    assert [g["GroupId"] for g in reservation["Instances"][0]["SecurityGroups"]] == [group_id]


def test_create_with_only_the_group_id_still_finds_its_name(ec2_harness, monkeypatch):
    driver = ec2_harness.driver
    group_id = driver.ensure_firewall("bench-db", [{"port": 5432, "cidr": "10.0.0.0/8"}], tags={})
    actions = _recording(driver, monkeypatch)
    driver.create_server(CreateServer(name="db-1", image_id=HARNESS_IMAGE_ID, size_id="t3.micro",
                                      firewall_id=group_id))
    assert actions == ["DescribeSecurityGroups", "RunInstances"]


def test_a_security_group_is_created_with_its_tags_in_one_call_and_found_again_on_a_retry(ec2_harness, moto_ec2,
                                                                                           monkeypatch):
    import boto3

    driver = ec2_harness.driver
    actions = _recording(driver, monkeypatch)
    rules = [{"port": 22, "cidr": "0.0.0.0/0"}]
    group_id = driver.ensure_firewall("bench-tagged", rules, tags={"skyport:operation": "7"})
    assert actions == ["CreateSecurityGroup", "AuthorizeSecurityGroupIngress"]
    actions.clear()
    assert driver.ensure_firewall("bench-tagged", rules, tags={"skyport:operation": "7"}) == group_id
    assert actions == ["CreateSecurityGroup", "DescribeSecurityGroups", "AuthorizeSecurityGroupIngress"]
    ec2 = boto3.client("ec2", endpoint_url=moto_ec2.endpoint, region_name=moto_ec2.region,
                       aws_access_key_id=moto_ec2.access_key_id, aws_secret_access_key=moto_ec2.secret_access_key)
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert {t["Key"]: t["Value"] for t in group.get("Tags", [])} == {"skyport:operation": "7"}
    assert [(p["FromPort"], p["IpRanges"][0]["CidrIp"]) for p in group["IpPermissions"]] == [(22, "0.0.0.0/0")]

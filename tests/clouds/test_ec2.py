"""The EC2 driver against moto's EC2 server on loopback (fixtures in fixtures_moto.py), plus the generic libcloud
driver on libcloud's offline Dummy provider. Behaviour shared by every driver is in test_contract.py."""

from __future__ import annotations

import datetime
import socket

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.compute.drivers.ec2 import EC2NodeDriver

from apps.clouds.drivers import libcloud_driver
from apps.clouds.drivers.base import (
    AuthError,
    CapacityError,
    CreateServer,
    ImageUpload,
    InvalidRequestError,
    NotFoundError,
    QuotaError,
    ServerState,
    TransientError,
)
from apps.clouds.drivers.libcloud_driver import EC2Driver, LibcloudDriver, ec2_size_arch
from tests.clouds.fixtures_moto import HARNESS_IMAGE_ID
from tests.clouds.moto_adapter import MotoEC2Connection

AUTH_MESSAGE = "EC2 rejected the access key: AuthFailure — check or rotate the credentials"


def launch(driver, name="web-1", **kwargs):
    return driver.create_server(
        CreateServer(name=name, image_id=HARNESS_IMAGE_ID, size_id=kwargs.pop("size_id", "t3.micro"), **kwargs)
    )


def boto_ec2(moto_ec2):
    return boto3.client(
        "ec2",
        endpoint_url=moto_ec2.endpoint,
        region_name=moto_ec2.region,
        aws_access_key_id=moto_ec2.access_key_id,
        aws_secret_access_key=moto_ec2.secret_access_key,
    )


def public_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return blob.decode() + " sam@laptop"


# --- lists ------------------------------------------------------------------------------------------------------


def test_list_servers_reads_every_page_past_100_reservations_and_filters_by_tag(moto_ec2):
    driver = moto_ec2.driver()
    moto_ec2.server.set_auth(False)  # IAM checks double moto's time per call; this test is about pages, not keys
    for n in range(150):  # one reservation each: DescribeInstances pages by reservation, 100 per page by default
        launch(driver, name=f"n{n}", tags={"batch": "even" if n % 2 == 0 else "odd"})

    # stock libcloud reads one page: the fixture really exercises pagination
    stock = type("StockEC2", (EC2NodeDriver,), {"connectionCls": MotoEC2Connection})(
        moto_ec2.access_key_id,
        moto_ec2.secret_access_key,
        region="us-east-1",
        host="127.0.0.1",
        port=int(moto_ec2.endpoint.rsplit(":", 1)[1]),
        secure=False,
        signature_version="4",
    )
    assert len(stock.list_nodes()) == 100

    servers = driver.list_servers()
    assert len(servers) == 150
    assert len({s.id for s in servers}) == 150
    odd = driver.list_servers(tags={"batch": "odd"})
    assert len(odd) == 75
    assert {s.name for s in odd} == {f"n{n}" for n in range(1, 150, 2)}


def test_catalogue_sizes_images_networks_regions(moto_ec2):
    driver = moto_ec2.driver()
    hits_before = libcloud_driver._ec2_sizes.cache_info().hits
    sizes = {s.id: s for s in driver.list_sizes()}
    driver.list_sizes()
    assert libcloud_driver._ec2_sizes.cache_info().hits > hits_before  # the static table is read once per process
    assert (sizes["t3.micro"].vcpus, sizes["t3.micro"].ram_mb, sizes["t3.micro"].arch) == (2, 1024, "x86_64")
    assert sizes["t3.micro"].price_per_hour is not None and sizes["t3.micro"].price_per_hour > 0
    assert sizes["m6g.large"].arch == "arm64"
    assert sizes["g4dn.xlarge"].gpus == 1 and sizes["g4dn.xlarge"].arch == "x86_64"
    assert "t1.micro" not in sizes  # previous generation
    families = moto_ec2.driver(size_families=["t3"]).list_sizes()
    assert families and {s.id.split(".")[0] for s in families} == {"t3"}

    own = driver.list_images()  # default: the account's own images only
    assert [i.name for i in own] == ["skyport-debian-12-arm64", "skyport-ubuntu-22.04-x86_64"]
    assert [i.arch for i in own] == ["arm64", "x86_64"]
    assert driver.list_images(owners=("137112412989",))[0].id == "ami-760aaa0f"
    assert [i.id for i in driver.list_images(name_patterns=("amzn-ami-*",))] == ["ami-760aaa0f"]
    assert driver.list_images(owners=("self",), name_patterns=("amzn-*",)) == []

    networks = driver.list_networks()
    assert len(networks) >= 1 and all(n.id.startswith("subnet-") and n.cidr for n in networks)

    regions = {r.id: r for r in driver.list_regions()}
    assert "eu-west-1" in regions
    assert regions["us-east-1"].zones and all(z.startswith("us-east-1") for z in regions["us-east-1"].zones)


# --- servers ----------------------------------------------------------------------------------------------------


def test_create_tags_token_user_data_subnet_and_tag_lookup(moto_ec2):
    driver = moto_ec2.driver()
    subnet = driver.list_networks()[0].id
    tags = {"skyport:installation": "inst-1", "skyport:operation": "op-1"}
    server = launch(
        driver, tags=tags, idempotency_token="op-1-attempt", user_data="#cloud-config\nhostname: web", network_id=subnet
    )
    launch(driver, name="other", tags={"skyport:installation": "inst-1", "skyport:operation": "op-2"})

    assert server.id.startswith("i-") and server.name == "web-1"
    assert server.tags == tags  # Name is the server's name, not one of its tags
    found = driver.list_servers(tags={"skyport:installation": "inst-1", "skyport:operation": "op-1"})
    assert [s.id for s in found] == [server.id]
    assert len(driver.list_servers(tags={"skyport:installation": "inst-1"})) == 2
    assert driver.list_servers(tags={"skyport:operation": "op-3"}) == []

    described = boto_ec2(moto_ec2).describe_instances(InstanceIds=[server.id])["Reservations"][0]["Instances"][0]
    assert described["ClientToken"] == "op-1-attempt"
    assert described["SubnetId"] == subnet
    user_data = boto_ec2(moto_ec2).describe_instance_attribute(InstanceId=server.id, Attribute="userData")
    import base64

    assert base64.b64decode(user_data["UserData"]["Value"]).decode() == "#cloud-config\nhostname: web"
    assert libcloud_driver.client_token("x" * 100) == libcloud_driver.client_token("x" * 100)
    assert len(libcloud_driver.client_token("x" * 100)) == 64


def test_lifecycle_states_and_delete(moto_ec2):
    driver = moto_ec2.driver()
    server = launch(driver)
    assert server.state in {ServerState.BUILDING, ServerState.RUNNING}
    got = driver.get_server(server.id)
    assert got.state == ServerState.RUNNING and got.size_id == "t3.micro" and got.image_id == HARNESS_IMAGE_ID
    assert got.private_ips and got.created_at and got.created_at.tzinfo == datetime.UTC
    driver.stop_server(server.id)
    assert driver.get_server(server.id).state == ServerState.STOPPED
    driver.start_server(server.id)
    driver.reboot_server(server.id, hard=True)
    assert driver.get_server(server.id).state == ServerState.RUNNING
    driver.delete_server(server.id)
    assert driver.get_server(server.id).state == ServerState.DELETED  # EC2 shows terminated instances for a while
    assert driver.list_servers() == []  # ...but lists and tag lookups leave them out


def test_resize_refused_while_running_then_done_stopped(moto_ec2):
    driver = moto_ec2.driver()
    assert EC2Driver.resize_steps == ("stop", "resize", "start")
    server = launch(driver)
    with pytest.raises(InvalidRequestError) as err:
        driver.resize_server(server.id, "t3.small")  # AWS refuses this; moto would not, so the driver checks
    assert "stopped" in str(err.value) and err.value.provider_code == "IncorrectInstanceState"
    assert driver.get_server(server.id).size_id == "t3.micro"

    driver.stop_server(server.id)
    driver.resize_server(server.id, "t3.small")
    driver.resize_server(server.id, "t3.small")  # a resumed step: already that size, nothing to do
    driver.start_server(server.id)
    after = driver.get_server(server.id)
    assert (after.size_id, after.state) == ("t3.small", ServerState.RUNNING)


def test_key_pair_imported_once_and_reused_by_fingerprint(moto_ec2):
    driver = moto_ec2.driver()
    key = public_key()
    first = launch(driver, name="a", public_key=key)
    second = launch(driver, name="b", public_key=key)
    pairs = driver.node_driver.list_key_pairs()
    assert len(pairs) == 1 and pairs[0].name.startswith("skyport-")
    instances = boto_ec2(moto_ec2).describe_instances(InstanceIds=[first.id, second.id])["Reservations"]
    assert {r["Instances"][0]["KeyName"] for r in instances} == {pairs[0].name}

    with pytest.raises(InvalidRequestError):
        launch(driver, name="c", public_key="ssh-rsa not-a-key")
    assert len(driver.list_servers()) == 2


def test_console_output_and_no_metrics(moto_ec2):
    driver = moto_ec2.driver()
    server = launch(driver)
    console = driver.console(server.id)
    assert console.kind == "log" and "Linux version" in console.output
    assert EC2Driver.has_metrics is False
    assert driver.cpu_metrics(server.id, since=datetime.datetime.now(datetime.UTC)) == []


def test_elastic_ip_attach_and_release(moto_ec2):
    driver = moto_ec2.driver()
    server = launch(driver)
    assert driver.get_server(server.id).public_ips  # an automatic address in the default VPC
    ip = driver.allocate_public_ip(tags={"skyport:operation": "op-9"})
    assert ip.id.startswith("eipalloc-") and ip.server_id is None

    driver.attach_public_ip(ip.id, server.id)
    assert driver.get_server(server.id).public_ips == (ip.address,)  # listed once, not twice
    assert driver.public_ip(ip.id).server_id == server.id
    addresses = boto_ec2(moto_ec2).describe_addresses(AllocationIds=[ip.id])["Addresses"]
    assert {"Key": "skyport:operation", "Value": "op-9"} in addresses[0]["Tags"]

    driver.release_public_ip(ip.id)  # detaches first
    after = driver.get_server(server.id).public_ips
    assert after and ip.address not in after  # EC2 gives the instance an automatic address again
    assert boto_ec2(moto_ec2).describe_addresses()["Addresses"] == []
    with pytest.raises(NotFoundError):
        driver.release_public_ip(ip.id)


def test_list_public_ips_filters_by_tags_given_at_allocation(moto_ec2):
    driver = moto_ec2.driver()
    server = launch(driver)
    mine = driver.allocate_public_ip(tags={"skyport:installation": "inst-1", "skyport:operation": "op-1"})
    other_op = driver.allocate_public_ip(tags={"skyport:installation": "inst-1", "skyport:operation": "op-2"})
    other_inst = driver.allocate_public_ip(tags={"skyport:installation": "inst-2", "skyport:operation": "op-1"})
    untagged = driver.allocate_public_ip()
    driver.attach_public_ip(mine.id, server.id)

    found = driver.list_public_ips(tags={"skyport:installation": "inst-1", "skyport:operation": "op-1"})
    assert [(ip.id, ip.address, ip.server_id) for ip in found] == [(mine.id, mine.address, server.id)]
    assert {ip.id for ip in driver.list_public_ips(tags={"skyport:operation": "op-1"})} == {mine.id, other_inst.id}
    assert driver.list_public_ips(tags={"skyport:operation": "op-3"}) == []
    everything = {ip.id: ip.server_id for ip in driver.list_public_ips()}
    assert everything == {mine.id: server.id, other_op.id: None, other_inst.id: None, untagged.id: None}

    driver.release_public_ip(mine.id)
    assert driver.list_public_ips(tags={"skyport:operation": "op-1"})[0].id == other_inst.id
    assert len(driver.list_public_ips()) == 3


def test_image_upload_is_not_offered_yet(moto_ec2):
    upload = ImageUpload(name="x", path="/nonexistent.raw", disk_format="raw")
    with pytest.raises(InvalidRequestError, match="EC2 imports an image in steps"):
        moto_ec2.driver().upload_image(upload)


# --- errors -----------------------------------------------------------------------------------------------------


def test_provider_errors_are_typed_with_clean_messages(moto_ec2):
    driver = moto_ec2.driver()
    with pytest.raises(NotFoundError) as err:
        driver.create_server(CreateServer(name="x", image_id="ami-12345678", size_id="t3.micro"))
    assert err.value.provider_code == "InvalidAMIID.NotFound"
    assert str(err.value).startswith("EC2 could not find it: InvalidAMIID.NotFound")
    assert "<" not in str(err.value) and "Traceback" not in str(err.value)

    with pytest.raises(NotFoundError) as err:
        launch(driver, size_id="t9.enormous")
    assert err.value.provider_code == "InvalidInstanceType.NotFound"
    with pytest.raises(NotFoundError):
        driver.get_server("i-0123456789abcdef0")
    with pytest.raises(NotFoundError):
        driver.stop_server("not-an-instance")
    assert driver.list_servers() == []  # nothing was created by the failed launches


def test_bad_credentials_raise_auth_error_and_secrets_never_show(moto_ec2):
    good = moto_ec2.driver()
    good.validate_credentials()
    secret = moto_ec2.secret_access_key

    wrong_secret = moto_ec2.driver(credentials=dict(moto_ec2.credentials, secret_key="Canary" + secret[6:]))
    with pytest.raises(AuthError) as err:
        wrong_secret.validate_credentials()
    assert str(err.value) == AUTH_MESSAGE
    assert err.value.provider_code == "AuthFailure"

    # the long AWS names are accepted too
    unknown_key = moto_ec2.driver(credentials={"access_key_id": "AKIANOTAKEY000000000", "secret_access_key": secret})
    with pytest.raises(AuthError):
        unknown_key.list_servers()
    with pytest.raises(AuthError):
        moto_ec2.driver(credentials={"access_key": "AKIA"}).validate_credentials()

    for driver in (good, wrong_secret, unknown_key):
        driver.node_driver  # built: the libcloud driver holds the secret, our repr must not reach it
        assert secret not in str(driver) and secret not in repr(driver)
        assert secret[6:] not in str(driver) and secret[6:] not in repr(driver)
    assert secret not in str(err.value) and secret not in repr(err.value)
    assert err.value.__cause__ is None  # the libcloud exception (and its driver) is not chained

    # a provider message that echoes the secret is scrubbed
    echoed = good._map_error(BaseHTTPError(400, f"InvalidParameterValue: bad value {secret}"), "testing")
    assert secret not in str(echoed) and "****" in str(echoed)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "InstanceLimitExceeded", QuotaError),
        (400, "VcpuLimitExceeded", QuotaError),
        (500, "InsufficientInstanceCapacity", CapacityError),
        (503, "RequestLimitExceeded", TransientError),
        (400, "Throttling", TransientError),
        (500, "InternalError", TransientError),
        (400, "InvalidInstanceID.NotFound", NotFoundError),
        (400, "InvalidAMIID.NotFound", NotFoundError),
        (403, "SignatureDoesNotMatch", AuthError),
        (403, "InvalidClientTokenId", AuthError),
        (403, "UnauthorizedOperation", AuthError),
        (400, "InvalidParameterValue", InvalidRequestError),
    ],
)
def test_error_codes_map_to_typed_errors(status, code, error):
    driver = EC2Driver(credentials={"access_key": "AKIAEXAMPLE", "secret_key": "s3cr3t-value"})
    mapped = driver._map_error(BaseHTTPError(status, f"{code}: something went wrong"), "testing")
    assert type(mapped) is error and mapped.provider_code == code
    assert "s3cr3t-value" not in str(mapped)
    if error is AuthError and code != "UnauthorizedOperation":
        assert str(mapped) == f"EC2 rejected the access key: {code} — check or rotate the credentials"


def test_throttling_and_unreachable_endpoint_are_transient():
    driver = EC2Driver(credentials={"access_key": "AKIAEXAMPLE", "secret_key": "s3cr3t-value"})
    assert isinstance(driver._map_error(RateLimitReachedError(headers={"retry-after": "3"}), "x"), TransientError)

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = EC2Driver(
        credentials={"access_key": "AKIAEXAMPLE", "secret_key": "s3cr3t-value"},
        region="us-east-1",
        endpoint=f"http://127.0.0.1:{port}",
    )
    with pytest.raises(TransientError) as err:
        closed.validate_credentials()
    assert err.value.retryable and "s3cr3t-value" not in str(err.value)

    with pytest.raises(InvalidRequestError):
        EC2Driver(credentials={"access_key": "a", "secret_key": "b"}, region="mars-1").list_servers()


def test_size_architecture_from_family():
    assert ec2_size_arch("m6g.large") == "arm64"
    assert ec2_size_arch("c7gn.xlarge") == "arm64"
    assert ec2_size_arch("t4g.nano") == "arm64"
    assert ec2_size_arch("a1.large") == "arm64"
    assert ec2_size_arch("g4dn.xlarge") == "x86_64"
    assert ec2_size_arch("m5.large") == "x86_64"
    assert ec2_size_arch("p3.2xlarge", "AWS Graviton2 Processor") == "arm64"


# --- the generic libcloud driver --------------------------------------------------------------------------------


def test_generic_libcloud_driver_on_the_dummy_provider():
    driver = LibcloudDriver(credentials={"key": "0", "secret": "dummy-secret"}, options={"provider": "dummy"})
    driver.validate_credentials()
    sizes = driver.list_sizes()
    images = driver.list_images()
    assert sizes and all(s.ram_mb > 0 for s in sizes)
    assert images and images[0].id
    assert driver.list_regions()
    servers = driver.list_servers()
    assert servers and driver.get_server(servers[0].id).id == servers[0].id

    # the Dummy provider cannot tag at creation: a crash-safe create is impossible there, so none is made
    with pytest.raises(InvalidRequestError, match="cannot tag a server"):
        driver.create_server(CreateServer(name="x", image_id=images[0].id, size_id=sizes[0].id))
    assert len(driver.list_servers()) == len(servers)

    driver.delete_server(servers[0].id)
    assert len(driver.list_servers()) == len(servers) - 1
    with pytest.raises(NotFoundError):
        driver.get_server(servers[0].id)
    with pytest.raises(InvalidRequestError, match="does not support resizing"):
        driver.resize_server("1", "s1")
    assert "dummy-secret" not in repr(driver)


def test_generic_libcloud_driver_refuses_unknown_provider():
    with pytest.raises(InvalidRequestError, match="no compute provider named 'nosuchcloud'"):
        LibcloudDriver(credentials={"key": "k"}, options={"provider": "nosuchcloud"}).list_sizes()
    with pytest.raises(InvalidRequestError):
        LibcloudDriver(credentials={"key": "k"}, options={}).list_sizes()


def test_product_fixes_for_create_tags_and_key_pair_lookup(moto_ec2):
    """libcloud sends ResourceId.0/Tag.0 and an unnumbered KeyName; the product driver sends the documented .1 forms."""
    driver = moto_ec2.driver()
    nd = driver.node_driver
    server = launch(driver, tags={"keep": "1"})
    node = nd.list_nodes(ex_node_ids=[server.id])[0]
    assert nd.ex_create_tags(node, {"team": "web", "tier": "front"}) is True
    assert driver.get_server(server.id).tags == {"keep": "1", "team": "web", "tier": "front"}
    assert nd.ex_delete_tags(node, {"tier": None}) is True
    assert driver.get_server(server.id).tags == {"keep": "1", "team": "web"}

    nd.import_key_pair_from_string("first", public_key())
    nd.import_key_pair_from_string("second", public_key())
    assert nd.get_key_pair("second").name == "second"
    with pytest.raises(NotFoundError), driver._errors("looking up a key pair"):
        nd.get_key_pair("missing")


def test_registry_builds_the_moto_adapted_driver(moto_ec2_kind):
    from apps.clouds.drivers import build_driver

    driver = build_driver(
        "ec2",
        credentials=moto_ec2_kind.credentials,
        region="us-east-1",
        endpoint=moto_ec2_kind.endpoint,
        options={},
    )
    driver.validate_credentials()
    assert driver.list_servers() == []

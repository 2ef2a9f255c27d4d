"""The OpenStack driver against a real OpenStack on loopback (marker `openstack`, tests/clouds/fixtures_openstack.py).

The mapping tests at the end need no cloud and run everywhere."""

from __future__ import annotations

import dataclasses
import subprocess
import time
import traceback
import uuid
from ipaddress import ip_address, ip_network

import pytest

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
from apps.clouds.drivers.openstack_driver import OpenStackDriver, _server_state, translate_error
from tests.clouds.fixtures_openstack import OpenStackStack, openstack_wait

openstack = pytest.mark.openstack
CANARY = "canary-Pa55w0rd-7f3e91"


def _request(stack: OpenStackStack, **kwargs) -> tuple[CreateServer, str]:
    marker = uuid.uuid4().hex[:10]
    fields = {
        "name": f"os-{marker}",
        "image_id": stack.image_id,
        "size_id": stack.flavor_id,
        "network_id": stack.network_id,
        "tags": {"skyport:test": marker},
        "idempotency_token": f"os-{marker}",
        **kwargs,
    }
    return CreateServer(**fields), marker


@openstack
def test_tags_are_in_the_create_request_and_a_retry_finds_the_server(openstack_stack):
    driver = openstack_stack.driver()
    request, marker = _request(openstack_stack)
    request = dataclasses.replace(request, tags={"skyport:test": marker, "skyport:operation": "op-1"})
    server = driver.create_server(request)
    # no wait: the server is still building, and its tags are already there (set by the POST, not a later PUT)
    assert server.state in {ServerState.BUILDING, ServerState.RUNNING}
    assert server.tags == {"skyport:test": marker, "skyport:operation": "op-1"}
    raw_tags = driver.conn.compute.get_server(server.id).tags
    assert "skyport:test=" + marker in raw_tags and "skyport:operation=op-1" in raw_tags

    # the same idempotency token (a retry after a crash) answers with the same server, creating nothing
    again = driver.create_server(request)
    assert again.id == server.id
    found = driver.list_servers(tags={"skyport:test": marker})
    assert [s.id for s in found] == [server.id]
    assert driver.list_servers(tags={"skyport:test": marker, "skyport:operation": "other"}) == []
    driver.delete_server(server.id)


@openstack
def test_network_is_chosen_when_none_is_given(openstack_stack):
    driver = openstack_stack.driver()
    request, _ = _request(openstack_stack, network_id=None)
    server = driver.create_server(request)
    running = openstack_wait(driver)(server.id, {ServerState.RUNNING})
    demo_net = next(n for n in driver.list_networks() if n.id == openstack_stack.network_id)
    assert running.private_ips
    assert all(ip_address(ip) in ip_network(demo_net.cidr) for ip in running.private_ips)
    ports = list(driver.conn.network.ports(device_id=server.id))
    assert [p.network_id for p in ports] == [openstack_stack.network_id]
    driver.delete_server(server.id)


@openstack
def test_floating_ip_is_attached_only_once_the_server_is_active(openstack_stack):
    driver = openstack_stack.driver()
    server = driver.create_server(_request(openstack_stack)[0])
    ip = driver.allocate_public_ip(tags={"skyport:operation": "op-ip"})
    assert ip_address(ip.address) in ip_network("203.0.113.0/24") and ip.server_id is None
    with pytest.raises(TransientError, match="not active yet"):
        driver.attach_public_ip(ip.id, server.id)
    assert driver.conn.network.get_ip(ip.id).port_id is None  # nothing attached by the refused call

    openstack_wait(driver)(server.id, {ServerState.RUNNING})
    driver.attach_public_ip(ip.id, server.id)
    driver.attach_public_ip(ip.id, server.id)  # a retried step is harmless
    # nova learns of the attachment from neutron's event and refreshes its address cache a moment later
    deadline = time.monotonic() + 60
    while ip.address not in driver.get_server(server.id).public_ips and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ip.address in driver.get_server(server.id).public_ips
    assert driver.conn.network.get_ip(ip.id).port_id is not None
    driver.delete_server(server.id)
    driver.release_public_ip(ip.id)
    with pytest.raises(NotFoundError):
        driver.release_public_ip(ip.id)


@openstack
def test_floating_ips_carry_their_tags_from_creation_and_are_found_by_them(openstack_stack):
    driver = openstack_stack.driver()
    run = uuid.uuid4().hex[:10]
    ours = {"skyport:installation": f"inst-{run}", "skyport:operation": f"op-{run}"}
    mine = driver.allocate_public_ip(tags=ours)
    other = driver.allocate_public_ip(tags={**ours, "skyport:operation": f"other-{run}"})
    untagged = driver.allocate_public_ip()
    try:
        raw = driver.conn.network.get_ip(mine.id)
        # the tags are in the description, which the create request itself writes; neutron tags follow for operators
        assert sorted(raw.description.split()) == sorted(f"{k}={v}" for k, v in ours.items())
        if "standard-attr-tag" in driver._neutron_extensions():
            assert sorted(raw.tags) == sorted(raw.description.split())

        # an address whose allocation was interrupted before its neutron tags were set is still found
        driver.conn.network.set_tags(raw, [])

        found = driver.list_public_ips(tags=ours)
        assert [(ip.id, ip.address, ip.server_id) for ip in found] == [(mine.id, mine.address, None)]
        same_installation = driver.list_public_ips(tags={"skyport:installation": f"inst-{run}"})
        assert {ip.id for ip in same_installation} == {mine.id, other.id}
        assert driver.list_public_ips(tags={**ours, "skyport:operation": f"none-{run}"}) == []
        assert {mine.id, other.id, untagged.id} <= {ip.id for ip in driver.list_public_ips()}

        # attached: the lookup reports the server
        server = driver.create_server(_request(openstack_stack)[0])
        openstack_wait(driver)(server.id, {ServerState.RUNNING})
        driver.attach_public_ip(mine.id, server.id)
        assert [ip.server_id for ip in driver.list_public_ips(tags=ours)] == [server.id]
        driver.delete_server(server.id)

        driver.release_public_ip(mine.id)
        assert driver.list_public_ips(tags=ours) == []
    finally:
        for ip in (mine, other, untagged):
            driver.conn.network.delete_ip(ip.id, ignore_missing=True)


@openstack
def test_resize_then_confirm(openstack_stack):
    driver = openstack_stack.driver()
    wait = openstack_wait(driver)
    assert driver.resize_steps == ("resize", "confirm_resize")
    server = driver.create_server(_request(openstack_stack)[0])
    wait(server.id, {ServerState.RUNNING})
    driver.resize_server(server.id, openstack_stack.other_flavor_id)
    staged = wait(server.id, {ServerState.VERIFY_RESIZE})
    assert staged.size_id == openstack_stack.other_flavor_id
    driver.confirm_resize(server.id)
    done = wait(server.id, {ServerState.RUNNING})
    assert done.size_id == openstack_stack.other_flavor_id
    driver.delete_server(server.id)


@openstack
def test_stop_start_reboot_hard(openstack_stack):
    driver = openstack_stack.driver()
    wait = openstack_wait(driver)
    server = driver.create_server(_request(openstack_stack)[0])
    wait(server.id, {ServerState.RUNNING})
    driver.stop_server(server.id)
    assert wait(server.id, {ServerState.STOPPED}).state == ServerState.STOPPED
    with pytest.raises(InvalidRequestError):  # nova refuses to stop a stopped server (409, not in transition)
        driver.stop_server(server.id)
    driver.start_server(server.id)
    wait(server.id, {ServerState.RUNNING})
    driver.reboot_server(server.id, hard=True)
    assert wait(server.id, {ServerState.RUNNING}).state == ServerState.RUNNING
    driver.delete_server(server.id)


@openstack
def test_key_pair_is_imported_once_and_user_data_is_accepted(openstack_stack):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public_key = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    driver = openstack_stack.driver()
    user_data = "#cloud-config\nruncmd:\n  - echo hello\n"
    first = driver.create_server(_request(openstack_stack, public_key=public_key, user_data=user_data)[0])
    second = driver.create_server(_request(openstack_stack, public_key=public_key + "\n")[0])
    key_names = {driver.conn.compute.get_server(s.id).key_name for s in (first, second)}
    assert len(key_names) == 1 and None not in key_names
    (key_name,) = key_names
    assert driver.conn.compute.get_keypair(key_name).public_key.strip() == public_key
    # nova refuses user data that is not base64 (400): a running server shows the driver encoded it
    openstack_wait(driver)(first.id, {ServerState.RUNNING})
    for server in (first, second):
        driver.delete_server(server.id)
    driver.conn.compute.delete_keypair(key_name)


@openstack
def test_a_named_key_pair_is_the_deployments_own_and_is_deleted_with_it(openstack_stack):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from openstack import exceptions as os_exc

    public_key = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    driver = openstack_stack.driver()
    name = f"skyport-test-d{uuid.uuid4().hex[:8]}"
    server = driver.create_server(_request(openstack_stack, public_key=public_key, key_name=name)[0])
    assert driver.conn.compute.get_server(server.id).key_name == name
    driver.delete_server(server.id)
    driver.delete_key_pair(name)
    with pytest.raises(os_exc.NotFoundException):
        driver.conn.compute.get_keypair(name)
    driver.delete_key_pair(name)  # already gone: not an error


@openstack
def test_a_firewall_opens_the_ports_and_goes_with_its_server(openstack_stack):
    driver = openstack_stack.driver()
    name = f"skyport-test-d{uuid.uuid4().hex[:8]}-web"
    rules = [{"port": 80, "cidr": "0.0.0.0/0", "protocol": "tcp"}, {"port": 5432, "cidr": "10.0.0.0/8",
                                                                     "protocol": "tcp"}]
    group_id = driver.ensure_firewall(name, rules, tags={"skyport:test": "1"})
    assert driver.ensure_firewall(name, rules, tags={}) == group_id  # a retry finds it, rules not doubled
    group = driver.conn.network.get_security_group(group_id)
    ingress = sorted((r["port_range_min"], r["remote_ip_prefix"]) for r in group.security_group_rules
                     if r["direction"] == "ingress" and r["port_range_min"])
    assert ingress == [(80, "0.0.0.0/0"), (5432, "10.0.0.0/8")]
    server = driver.create_server(_request(openstack_stack, firewall_id=group_id)[0])
    openstack_wait(driver)(server.id, {ServerState.RUNNING})
    assert group.name in {g["name"] for g in driver.conn.compute.get_server(server.id).security_groups}
    driver.delete_server(server.id)
    deadline = time.monotonic() + 60
    while True:  # until the server and its port are gone, the group is in use (a TransientError, retried)
        try:
            driver.delete_firewall(name)
            break
        except TransientError:
            assert time.monotonic() < deadline, "the security group stayed in use"
            time.sleep(1)
    assert driver.conn.network.find_security_group(name) is None
    driver.delete_firewall(name)  # already gone: not an error


@openstack
def test_console_is_a_novnc_url(openstack_stack):
    driver = openstack_stack.driver()
    server = driver.create_server(_request(openstack_stack)[0])
    openstack_wait(driver)(server.id, {ServerState.RUNNING})
    console = driver.console(server.id)
    assert console.kind == "url"
    assert console.url.startswith("http://127.0.0.1:6080/vnc_auto.html") and "token" in console.url
    driver.delete_server(server.id)


@openstack
def test_upload_then_delete_image(openstack_stack, tmp_path):
    driver = openstack_stack.driver()
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "32M"], check=True)  # noqa: S607
    name = f"upload-{uuid.uuid4().hex[:8]}"
    image = driver.upload_image(ImageUpload(name=name, path=str(path), disk_format="qcow2", tags={"skyport:t": "1"}))
    try:
        assert image.name == name and image.disk_format == "qcow2" and image.status == "available"
        assert image.owner == driver.project_id and not image.is_public
        assert image.id in {i.id for i in driver.list_images()}
        glance = driver.conn.image.get_image(image.id)
        assert glance.size == path.stat().st_size and "skyport:t=1" in glance.tags
        driver.delete_image(image.id)
        assert image.id not in {i.id for i in driver.list_images()}
        with pytest.raises(NotFoundError):
            driver.delete_image(image.id)
    finally:
        driver.conn.image.delete_image(image.id, ignore_missing=True)


@openstack
def test_bad_credentials_are_an_auth_error_without_the_password(openstack_stack):
    bad = openstack_stack.driver(password=CANARY)
    with pytest.raises(AuthError) as caught:
        bad.validate_credentials()
    assert caught.value.message.startswith("OpenStack rejected the credentials: ")
    rendered = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + repr(bad)
    assert CANARY not in rendered
    with pytest.raises(AuthError):  # any call, not only the check
        bad.list_servers()


@openstack
def test_unknown_things_are_not_found(openstack_stack):
    driver = openstack_stack.driver()
    missing = str(uuid.uuid4())
    for call in (driver.get_server, driver.stop_server, driver.delete_server, driver.console):
        with pytest.raises(NotFoundError):
            call(missing)
    with pytest.raises(NotFoundError):
        driver.release_public_ip(missing)


@openstack
def test_error_messages_are_readable_and_carry_no_secret(openstack_stack):
    driver = openstack_stack.driver()
    errors = []
    for call in (
        lambda: driver.create_server(_request(openstack_stack, size_id="no-such-flavor")[0]),
        lambda: driver.resize_server(str(uuid.uuid4()), openstack_stack.other_flavor_id),
        lambda: driver.attach_public_ip(str(uuid.uuid4()), str(uuid.uuid4())),
    ):
        with pytest.raises((InvalidRequestError, NotFoundError)) as caught:
            call()
        errors.append(caught.value)
    assert isinstance(errors[0], InvalidRequestError) and "create the server" in errors[0].message
    for error in errors:
        text = "".join(traceback.format_exception(error)) + repr(error)
        assert openstack_stack.password not in text
        assert error.message.startswith("OpenStack")
    assert openstack_stack.password not in repr(driver) and openstack_stack.password not in repr(openstack_stack)

    unreachable = OpenStackDriver(
        credentials={"username": "demo", "password": CANARY}, region="RegionOne", endpoint="http://127.0.0.1:9/v3"
    )
    with pytest.raises(TransientError) as caught:
        unreachable.validate_credentials()
    assert CANARY not in "".join(traceback.format_exception(caught.value))


# --- no cloud needed -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "task", "state"),
    [
        ("BUILD", "spawning", ServerState.BUILDING),
        ("ACTIVE", None, ServerState.RUNNING),
        ("ACTIVE", "powering-off", ServerState.STOPPING),
        ("SHUTOFF", "powering-on", ServerState.STARTING),
        ("SHUTOFF", None, ServerState.STOPPED),
        ("REBOOT", "reboot_started", ServerState.REBOOTING),
        ("HARD_REBOOT", None, ServerState.REBOOTING),
        ("RESIZE", "resize_prep", ServerState.RESIZING),
        ("VERIFY_RESIZE", None, ServerState.VERIFY_RESIZE),
        ("ACTIVE", "deleting", ServerState.DELETING),
        ("SOFT_DELETED", None, ServerState.DELETED),
        ("DELETED", None, ServerState.DELETED),
        ("ERROR", None, ServerState.ERROR),
        ("PAUSED", None, ServerState.UNKNOWN),
    ],
)
def test_state_mapping(status, task, state):
    assert _server_state(status, task) == state


def test_error_translation():
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc

    def http(status: int, details: str) -> Exception:
        exc = os_exc.HttpException(message="Error", details=details)
        exc.status_code = status
        return exc

    assert isinstance(translate_error(ks_exc.Unauthorized("The request you have made requires auth"), "x"), AuthError)
    assert isinstance(translate_error(http(403, "Quota exceeded for instances: Requested 1"), "x"), QuotaError)
    assert isinstance(translate_error(http(413, "Request entity too large"), "x"), QuotaError)
    assert isinstance(translate_error(http(403, "Policy doesn't allow it"), "x"), AuthError)
    assert isinstance(translate_error(http(404, "Instance could not be found"), "x"), NotFoundError)
    assert isinstance(translate_error(http(500, "No valid host was found."), "x"), CapacityError)
    busy = translate_error(http(409, "Cannot 'stop' instance while it is in task_state powering-off"), "stop")
    assert isinstance(busy, TransientError) and busy.retryable
    stopped = translate_error(http(409, "Cannot 'stop' instance in vm_state stopped"), "x")
    assert isinstance(stopped, InvalidRequestError)
    assert isinstance(translate_error(http(503, "Service Unavailable"), "x"), TransientError)
    assert isinstance(translate_error(http(400, "Invalid flavorRef provided."), "x"), InvalidRequestError)
    assert isinstance(translate_error(ks_exc.ConnectFailure("refused"), "x"), TransientError)
    message = translate_error(http(404, "Instance abc could not be found."), "stop server abc").message
    assert message == "OpenStack could not stop server abc: not found (Instance abc could not be found.)"

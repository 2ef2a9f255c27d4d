"""Harness fixtures (see tests/clouds/conftest.py): the real OpenStack on loopback (scripts/openstack-dev/stack.sh).

The stack is not started here (bring-up takes a minute or more): `stack.sh install && stack.sh up` starts it and
writes the connection details to $SKYPORT_OPENSTACK_DIR/skyport.env; the tests read SKYPORT_OPENSTACK_* from the
environment, else from that file. Tests marked `openstack` run only when `-m` selects the marker (CI's openstack
stage: `pytest -m openstack`); elsewhere they are skipped. Selected while the stack is down, they fail and say how
to start it.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.clouds.drivers.base import Server, ServerState
from apps.clouds.drivers.openstack_driver import OpenStackDriver
from tests.clouds.harness import Harness

STACK_DIR = Path(os.environ.get("SKYPORT_OPENSTACK_DIR", "/var/tmp/skyport-openstack"))
START_HINT = "scripts/openstack-dev/stack.sh install && scripts/openstack-dev/stack.sh up"
ENV_KEYS = (
    "AUTH_URL",
    "REGION",
    "USERNAME",
    "PASSWORD",
    "PROJECT",
    "DOMAIN",
    "IMAGE",
    "NETWORK",
    "FLAVOR",
    "OTHER_FLAVOR",
)
WAIT_LIMIT = 180.0  # seconds; a create is ACTIVE in ~5 s, more under load on 2 cores
POLL = 0.5


@dataclass(frozen=True)
class OpenStackStack:
    auth_url: str
    region: str
    username: str
    password: str
    project: str
    domain: str
    image_id: str
    network_id: str
    flavor_id: str
    other_flavor_id: str

    def __repr__(self) -> str:  # never the password
        return f"<OpenStackStack {self.auth_url} project={self.project} user={self.username}>"

    def driver(self, *, password: str | None = None, **options: str) -> OpenStackDriver:
        return OpenStackDriver(
            credentials={"username": self.username, "password": password or self.password},
            region=self.region,
            endpoint=self.auth_url,
            options={
                "project_name": self.project,
                "user_domain_name": self.domain,
                "project_domain_name": self.domain,
                **options,
            },
        )


def _stack_settings() -> dict[str, str]:
    values = {k: os.environ[f"SKYPORT_OPENSTACK_{k}"] for k in ENV_KEYS if os.environ.get(f"SKYPORT_OPENSTACK_{k}")}
    env_file = STACK_DIR / "skyport.env"
    if len(values) < len(ENV_KEYS) and env_file.exists():
        for line in env_file.read_text().splitlines():
            match = re.fullmatch(r"(?:export )?SKYPORT_OPENSTACK_(\w+)=(.*)", line.strip())
            if match and match[1] in ENV_KEYS:
                values.setdefault(match[1], match[2].strip("'\""))
    return values


def openstack_selected(config: pytest.Config) -> bool:
    """Whether this run asked for the OpenStack tests (`-m openstack`, not merely failed to exclude them)."""
    expression = config.getoption("markexpr", "") or ""
    return bool(re.search(r"(?<!not )\bopenstack\b", expression))


def openstack_wait(driver: OpenStackDriver):
    """wait(server_id, states): poll the real cloud until the server is in one of `states`."""

    def wait(server_id: str, states: set[ServerState]) -> Server:
        deadline = time.monotonic() + WAIT_LIMIT
        last: Server | None = None
        while time.monotonic() < deadline:
            last = driver.get_server(server_id)  # NotFoundError propagates: a deleted server is gone
            if last.state in states:
                return last
            if last.state == ServerState.ERROR:
                raise AssertionError(f"server {server_id} went to ERROR: {last.fault}")
            time.sleep(POLL)
        raise AssertionError(
            f"server {server_id} never reached {sorted(states)} in {WAIT_LIMIT:.0f}s; last state "
            f"{last.state if last else None}"
        )

    return wait


@pytest.fixture(scope="session")
def openstack_stack(request) -> OpenStackStack:
    """The running stack's connection details; the servers and floating IPs a session leaves behind are removed."""
    if not openstack_selected(request.config):
        pytest.skip("OpenStack tests run with -m openstack against a running stack: " + START_HINT)
    values = _stack_settings()
    missing = [f"SKYPORT_OPENSTACK_{k}" for k in ENV_KEYS if k not in values]
    if missing:
        pytest.fail(
            f"The OpenStack test stack is not up: no {', '.join(missing)} in the environment or in "
            f"{STACK_DIR / 'skyport.env'}. Start it with: {START_HINT}",
            pytrace=False,
        )
    auth_url = values["AUTH_URL"]
    problem = ""
    try:
        with urllib.request.urlopen(auth_url, timeout=5):  # noqa: S310 (the loopback URL of the test stack)
            pass
    except OSError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(
            f"The OpenStack test stack is not up: keystone at {auth_url} does not answer ({problem}). "
            f"Start it with: {START_HINT}",
            pytrace=False,
        )
    stack = OpenStackStack(
        auth_url=auth_url,
        region=values["REGION"],
        username=values["USERNAME"],
        password=values["PASSWORD"],
        project=values["PROJECT"],
        domain=values["DOMAIN"],
        image_id=values["IMAGE"],
        network_id=values["NETWORK"],
        flavor_id=values["FLAVOR"],
        other_flavor_id=values["OTHER_FLAVOR"],
    )
    conn = stack.driver().conn
    servers_before = {s.id for s in conn.compute.servers(details=False)}
    ips_before = {ip.id for ip in conn.network.ips()}
    yield stack
    for server in conn.compute.servers(details=False):
        if server.id not in servers_before:
            conn.compute.delete_server(server.id, ignore_missing=True)
    for ip in conn.network.ips():
        if ip.id not in ips_before:
            conn.network.delete_ip(ip.id, ignore_missing=True)


@pytest.fixture
def openstack_harness(openstack_stack: OpenStackStack) -> Harness:
    driver = openstack_stack.driver()
    return Harness(
        kind="openstack",
        driver=driver,
        image_id=openstack_stack.image_id,
        size_id=openstack_stack.flavor_id,
        other_size_id=openstack_stack.other_flavor_id,
        network_id=openstack_stack.network_id,
        wait=openstack_wait(driver),
        bad_credentials_driver=openstack_stack.driver(password="not-the-password-0xC0FFEE"),
    )


__all__ = ["OpenStackStack", "openstack_harness", "openstack_selected", "openstack_stack", "openstack_wait"]

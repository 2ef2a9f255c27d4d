"""Identity set-up and test fixtures of the loopback OpenStack (run by stack.sh with the service virtualenv).

    setup_cloud.py identity       service project/users, services and endpoints (keystone must answer)
    setup_cloud.py fixtures DIR   flavors, external network, demo project/user, quotas, image, demo network;
                                  writes DIR/skyport.env with the connection details the tests read
Idempotent: what exists is reused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openstack

AUTH_URL = "http://127.0.0.1:5000/v3"
REGION = "RegionOne"
SERVICES = {  # name: (type, url)
    "glance": ("image", "http://127.0.0.1:9292"),
    "placement": ("placement", "http://127.0.0.1:8778"),
    "nova": ("compute", "http://127.0.0.1:8774/v2.1"),
    "neutron": ("network", "http://127.0.0.1:9696"),
}
DEMO = {"project": "demo", "user": "demo", "password": "demo-secret"}


def connect(user: str = "admin", password: str = "admin", project: str = "admin") -> openstack.connection.Connection:
    return openstack.connect(
        auth_url=AUTH_URL,
        username=user,
        password=password,
        project_name=project,
        user_domain_name="Default",
        project_domain_name="Default",
        region_name=REGION,
        identity_api_version="3",
    )


def ensure_role_assignment(conn, role, user, project) -> None:
    conn.identity.assign_project_role_to_user(project, user, role)


def identity() -> None:
    conn = connect()
    idn = conn.identity
    domain = idn.find_domain("default") or idn.find_domain("Default")
    service_project = idn.find_project("service", domain_id=domain.id) or idn.create_project(
        name="service", domain_id=domain.id
    )
    roles = {name: idn.find_role(name) or idn.create_role(name=name) for name in ("admin", "service")}
    for name, (kind, url) in SERVICES.items():
        user = idn.find_user(name, domain_id=domain.id) or idn.create_user(
            name=name, password=name, domain_id=domain.id, default_project_id=service_project.id
        )
        for role in roles.values():
            ensure_role_assignment(conn, role, user, service_project)
        service = next((s for s in idn.services() if s.type == kind), None) or idn.create_service(
            name=name, type=kind, is_enabled=True
        )
        have = {e.interface for e in idn.endpoints(service_id=service.id, region_id=REGION)}
        for interface in ("public", "internal", "admin"):
            if interface not in have:
                idn.create_endpoint(service_id=service.id, interface=interface, url=url, region_id=REGION)
    print("identity: service users, services and endpoints ready")


def fixtures(stack: Path) -> None:
    admin = connect()
    idn = admin.identity
    domain = idn.find_domain("default")

    flavors = {f.name: f for f in admin.compute.flavors()}
    for name, ram, disk in (("m1.tiny", 128, 1), ("m1.small", 256, 2)):
        if name not in flavors:
            admin.compute.create_flavor(name=name, vcpus=1, ram=ram, disk=disk)

    public = admin.network.find_network("public")
    if public is None:
        public = admin.network.create_network(
            name="public",
            is_router_external=True,
            provider_network_type="flat",
            provider_physical_network="public",
            is_shared=False,
        )
    if not list(admin.network.subnets(network_id=public.id)):
        admin.network.create_subnet(
            network_id=public.id,
            name="public-subnet",
            ip_version=4,
            cidr="203.0.113.0/24",
            gateway_ip="203.0.113.1",
            is_dhcp_enabled=False,
            allocation_pools=[{"start": "203.0.113.10", "end": "203.0.113.250"}],
        )

    project = idn.find_project(DEMO["project"], domain_id=domain.id) or idn.create_project(
        name=DEMO["project"], domain_id=domain.id
    )
    user = idn.find_user(DEMO["user"], domain_id=domain.id) or idn.create_user(
        name=DEMO["user"], password=DEMO["password"], domain_id=domain.id, default_project_id=project.id
    )
    ensure_role_assignment(admin, idn.find_role("member"), user, project)
    # nova's defaults (10 instances, 20 cores) stop bulk tests
    admin.set_compute_quotas(project.id, instances=300, cores=600, ram=614400, key_pairs=200)
    admin.set_network_quotas(project.id, port=1000, floatingip=200, network=50, router=20, subnet=50)

    demo = connect(DEMO["user"], DEMO["password"], DEMO["project"])
    image = demo.image.find_image("tiny")
    if image is None:
        path = stack / "state" / "tiny.qcow2"
        if not path.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
        image = demo.image.create_image(
            name="tiny", filename=str(path), disk_format="qcow2", container_format="bare", wait=True
        )
    net = demo.network.find_network("demo-net")
    if net is None:
        net = demo.network.create_network(name="demo-net")
    subnet = next(iter(demo.network.subnets(network_id=net.id)), None)
    if subnet is None:
        subnet = demo.network.create_subnet(
            network_id=net.id, name="demo-subnet", ip_version=4, cidr="10.0.0.0/24", dns_nameservers=[]
        )
    router = demo.network.find_router("demo-router")
    if router is None:
        router = demo.network.create_router(name="demo-router", external_gateway_info={"network_id": public.id})
        demo.network.add_interface_to_router(router, subnet_id=subnet.id)

    env = {
        "SKYPORT_OPENSTACK_AUTH_URL": AUTH_URL,
        "SKYPORT_OPENSTACK_REGION": REGION,
        "SKYPORT_OPENSTACK_USERNAME": DEMO["user"],
        "SKYPORT_OPENSTACK_PASSWORD": DEMO["password"],
        "SKYPORT_OPENSTACK_PROJECT": DEMO["project"],
        "SKYPORT_OPENSTACK_DOMAIN": "Default",
        "SKYPORT_OPENSTACK_IMAGE": image.id,
        "SKYPORT_OPENSTACK_NETWORK": net.id,
        "SKYPORT_OPENSTACK_FLAVOR": admin.compute.find_flavor("m1.tiny").id,
        "SKYPORT_OPENSTACK_OTHER_FLAVOR": admin.compute.find_flavor("m1.small").id,
    }
    env_file = stack / "skyport.env"
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    print(f"fixtures: demo project ready; connection details in {env_file}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["identity"]:
        identity()
    elif sys.argv[1:2] == ["fixtures"]:
        fixtures(Path(sys.argv[2]))
    else:
        raise SystemExit(__doc__)

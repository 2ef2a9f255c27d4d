"""OpenStack through openstacksdk: keystone for the account, nova for servers, glance for images, neutron for
networks and floating IPs.

What `conn.create_server(auto_ip=True, wait=True)` does for a user (choose the network, add a floating IP) is split
into calls that return at once: create_server only POSTs (with the server tags in the request, compute microversion
≥ 2.52, so that a retry after a crash finds the server), and the floating IP is allocated and then attached by
separate steps of the Operation protocol once the server is ACTIVE (attach raises TransientError before that).
A server's addresses are nova's view: a floating IP shows there a moment after the attach (nova refreshes its cache
on neutron's event).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fnmatch
import hashlib
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from apps.clouds.drivers.base import (
    AuthError,
    CapacityError,
    CloudDriver,
    CloudError,
    Console,
    CpuSample,
    CreateServer,
    Image,
    ImagePending,
    ImageUpload,
    InvalidRequestError,
    Network,
    NotFoundError,
    PublicIP,
    QuotaError,
    Region,
    Server,
    ServerState,
    Size,
    TransientError,
)

# nova's status → our state; a task in progress (task_state) takes precedence where it says more
STATUS_MAP: dict[str, ServerState] = {
    "BUILD": ServerState.BUILDING,
    "ACTIVE": ServerState.RUNNING,
    "SHUTOFF": ServerState.STOPPED,
    "REBOOT": ServerState.REBOOTING,
    "HARD_REBOOT": ServerState.REBOOTING,
    "RESIZE": ServerState.RESIZING,
    "REVERT_RESIZE": ServerState.RESIZING,
    "MIGRATING": ServerState.RESIZING,
    "VERIFY_RESIZE": ServerState.VERIFY_RESIZE,
    "DELETED": ServerState.DELETED,
    "SOFT_DELETED": ServerState.DELETED,
    "ERROR": ServerState.ERROR,
    "SHELVED_OFFLOADED": ServerState.STOPPED,
}
TASK_MAP: dict[str, ServerState] = {
    "powering-off": ServerState.STOPPING,
    "powering-on": ServerState.STARTING,
    "deleting": ServerState.DELETING,
}
TOKEN_TAG = "skyport:token"
MAX_TAG_LENGTH = 60  # nova's limit; "/" and "," are not allowed in a server tag
IMAGE_ACTIVE_TIMEOUT = 120.0
MAX_DESCRIPTION_LENGTH = 255
TAG_EXTENSION = "standard-attr-tag"  # neutron's extension for tags on resources


def _encode_tags(tags: dict[str, str]) -> list[str]:
    encoded = []
    for key, value in sorted(tags.items()):
        tag = f"{key}={value}"
        if len(tag) > MAX_TAG_LENGTH or "/" in tag or "," in tag:
            raise InvalidRequestError(
                f"OpenStack cannot store the tag {tag!r}: nova tags are at most {MAX_TAG_LENGTH} characters "
                "without '/' or ','."
            )
        encoded.append(tag)
    return encoded


def _decode_tags(tags: list[str] | None) -> dict[str, str]:
    decoded: dict[str, str] = {}
    for tag in tags or ():
        key, sep, value = tag.partition("=")
        if sep and key != TOKEN_TAG:
            decoded[key] = value
    return decoded


def _token_tag(token: str) -> str:
    tag = f"{TOKEN_TAG}={token}"
    if len(tag) > MAX_TAG_LENGTH or "/" in tag or "," in tag:
        tag = f"{TOKEN_TAG}=sha256:{hashlib.sha256(token.encode()).hexdigest()[:32]}"
    return tag


def _ip_description(encoded: list[str]) -> str:
    """A floating IP's tags, space-separated in its description (neutron allows 255 characters)."""
    if any(any(c.isspace() for c in tag) for tag in encoded):
        raise InvalidRequestError("OpenStack floating IP tags cannot contain spaces.")
    description = " ".join(encoded) or "skyport"
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequestError(
            f"OpenStack cannot store these tags on a floating IP: more than {MAX_DESCRIPTION_LENGTH} characters."
        )
    return description


def _description_tags(description: str | None) -> dict[str, str]:
    return _decode_tags((description or "").split())


def _parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _server_state(status: str | None, task_state: str | None) -> ServerState:
    if task_state and task_state in TASK_MAP:
        return TASK_MAP[task_state]
    return STATUS_MAP.get((status or "").upper(), ServerState.UNKNOWN)


def _error_text(exc: Exception) -> str:
    """The provider's own words, without URLs or anything from the request (which could carry a secret)."""
    details = getattr(exc, "details", None)
    if details:
        return str(details).strip()
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message).strip()


def translate_error(exc: Exception, action: str) -> CloudError:
    """An openstacksdk / keystoneauth exception → one of our typed errors, with a message for operators."""
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc

    text = _error_text(exc)
    lowered = text.lower()
    status = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
    where = f"OpenStack could not {action}"
    if isinstance(exc, ks_exc.Unauthorized) or status == 401 or "(HTTP 401)" in text:
        return AuthError(f"OpenStack rejected the credentials: {text}", provider_code="401")
    if "quota" in lowered or status == 413:
        return QuotaError(f"{where}: quota exceeded ({text})", provider_code=str(status or "quota"))
    if "no valid host" in lowered:
        return CapacityError(f"{where}: no capacity ({text})", provider_code="NoValidHost")
    if status == 403:
        return AuthError(f"{where}: permission denied ({text})", provider_code="403")
    if status == 404 or isinstance(exc, os_exc.NotFoundException):
        return NotFoundError(f"{where}: not found ({text})", provider_code="404")
    if status == 409:
        # nova answers 409 for an action on a server that is still busy with another (task_state set)
        if "task_state" in lowered or "in transition" in lowered or "locked" in lowered:
            return TransientError(f"{where}: the resource is busy ({text})", provider_code="409")
        return InvalidRequestError(f"{where}: conflict ({text})", provider_code="409")
    if status == 429 or (status is not None and status >= 500):
        return TransientError(f"{where}: the cloud answered {status} ({text})", provider_code=str(status))
    if status == 400 or isinstance(exc, os_exc.BadRequestException):
        return InvalidRequestError(f"{where}: invalid request ({text})", provider_code="400")
    if isinstance(exc, ks_exc.DiscoveryFailure | ks_exc.EndpointNotFound | os_exc.EndpointNotFound):
        return InvalidRequestError(f"{where}: {text} (check the auth URL and the region)")
    if isinstance(exc, ks_exc.ConnectionError | ks_exc.RetriableConnectionFailure | os_exc.ResourceTimeout):
        return TransientError(f"{where}: the cloud did not answer ({type(exc).__name__}: {text})")
    if isinstance(exc, ks_exc.MissingRequiredOptions | ks_exc.AuthPluginException):
        return InvalidRequestError(f"{where}: incomplete account settings ({text})")
    if status is not None and 400 <= status < 500:
        return InvalidRequestError(f"{where}: {text}", provider_code=str(status))
    return TransientError(f"{where}: {type(exc).__name__}: {text}")


class OpenStackDriver(CloudDriver):
    """credentials: {username, password}; endpoint: the keystone auth URL; options: project_name, user_domain_name,
    project_domain_name (both "Default" when not given), region (or the driver's region), external_network
    (name or id of the floating IP pool; the first external network otherwise), verify (TLS, default True)."""

    kind: ClassVar[str] = "openstack"
    label: ClassVar[str] = "OpenStack"
    resize_steps: ClassVar[tuple[str, ...]] = ("resize", "confirm_resize")
    has_metrics: ClassVar[bool] = False
    # tags in the create request and the tags filter need 2.52; openstacksdk negotiates up to what both support
    min_compute_microversion: ClassVar[str] = "2.52"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._conn: Any = None
        self._flavor_ids: dict[str, str] | None = None
        self._extensions: set[str] | None = None

    # --- plumbing ------------------------------------------------------------------------------------------------
    @property
    def region_name(self) -> str | None:
        return self.region or self.options.get("region") or None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            import openstack.connection

            auth_url = self.endpoint or self.options.get("auth_url")
            if not auth_url:
                raise InvalidRequestError("The OpenStack account has no auth URL (the keystone endpoint).")
            username = self.credentials.get("username")
            password = self.credentials.get("password")
            if not username or not password:
                raise InvalidRequestError("The OpenStack account needs a username and a password.")
            self._conn = openstack.connection.Connection(
                auth={
                    "auth_url": auth_url,
                    "username": username,
                    "password": password,
                    "project_name": self.options.get("project_name") or username,
                    "user_domain_name": self.options.get("user_domain_name") or "Default",
                    "project_domain_name": self.options.get("project_domain_name") or "Default",
                },
                auth_type="password",
                region_name=self.region_name,
                identity_api_version="3",
                interface=self.options.get("interface") or "public",
                verify=self.options.get("verify", True),
                # bounded: a hung call must end well before the Operation lease (300 s) runs out
                api_timeout=min(max(float(self.options.get("timeout", 60)), 5.0), 120.0),
                # keystoneauth would otherwise retry a refused connection for a long time
                connect_retries=1,
            )
        return self._conn

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except CloudError:
            raise
        except Exception as exc:
            raise translate_error(exc, action) from None

    @property
    def project_id(self) -> str:
        with self._errors("find the project of the account"):
            project_id = self.conn.current_project_id
        if not project_id:
            raise AuthError("OpenStack issued no project-scoped token: check the project name and its domain.")
        return str(project_id)

    # --- account -------------------------------------------------------------------------------------------------
    def validate_credentials(self) -> None:
        with self._errors("check the credentials"):
            # the session, not conn.authorize(): that one flattens keystoneauth's typed errors into SDKException
            self.conn.session.get_token()
            # the catalogue must offer compute in the chosen region, else nothing else will work
            self.conn.compute.get_endpoint()

    def list_regions(self) -> list[Region]:
        with self._errors("list the regions"):
            regions = [r.id for r in self.conn.identity.regions()]
        zones: tuple[str, ...] = ()
        with contextlib.suppress(CloudError), self._errors("list the availability zones"):
            zones = tuple(
                sorted(z.name for z in self.conn.compute.availability_zones() if (z.state or {}).get("available", True))
            )
        return [Region(id=r, name=r, zones=zones if r == self.region_name else ()) for r in sorted(regions)]

    # --- catalogue -----------------------------------------------------------------------------------------------
    def list_sizes(self) -> list[Size]:
        with self._errors("list the flavors"):
            flavors = list(self.conn.compute.flavors(details=True))
        sizes = []
        for f in flavors:
            specs = f.extra_specs or {}
            arch = specs.get("capabilities:cpu_arch") or specs.get("hw:cpu_arch") or specs.get("cpu_arch") or "x86_64"
            gpus = 0
            for key, value in specs.items():
                if key.startswith("resources:") and "GPU" in key.upper():
                    with contextlib.suppress(ValueError):
                        gpus += int(value)
            sizes.append(
                Size(
                    id=str(f.id),
                    name=str(f.name),
                    vcpus=int(f.vcpus or 0),
                    ram_mb=int(f.ram or 0),
                    disk_gb=int(f.disk or 0),
                    arch=str(arch),
                    gpus=gpus,
                    price_per_hour=None,
                )
            )
        self._flavor_ids = {s.name: s.id for s in sizes}
        return sorted(sizes, key=lambda s: (s.vcpus, s.ram_mb, s.name))

    def _image(self, img: Any) -> Image:
        props = img.properties or {}
        return Image(
            id=str(img.id),
            name=str(img.name or ""),
            os=str(img.os_distro or props.get("os_distro") or ""),
            arch=str(img.architecture or props.get("architecture") or "x86_64"),
            owner=str(img.owner_id or ""),
            is_public=img.visibility == "public",
            status="available" if img.status == "active" else str(img.status or ""),
            min_disk_gb=int(img.min_disk or 0),
            disk_format=str(img.disk_format or ""),
            created_at=_parse_time(img.created_at),
        )

    def list_images(self, *, owners: tuple[str, ...] = (), name_patterns: tuple[str, ...] = ()) -> list[Image]:
        """The project's own images, images of the allow-listed owners, and public or shared images whose name
        matches one of `name_patterns` (a cloud may offer many public images)."""
        wanted_owners = {self.project_id, *owners}
        found: dict[str, Image] = {}
        with self._errors("list the images"):
            for img in self.conn.image.images(status="active"):
                image = self._image(img)
                if image.owner in wanted_owners or any(fnmatch.fnmatchcase(image.name, p) for p in name_patterns):
                    found[image.id] = image
        return sorted(found.values(), key=lambda i: (i.name, i.id))

    def list_networks(self) -> list[Network]:
        with self._errors("list the networks"):
            nets = list(self.conn.network.networks())
            cidrs: dict[str, str] = {}
            for subnet in self.conn.network.subnets():
                if subnet.ip_version == 4 or subnet.network_id not in cidrs:
                    cidrs.setdefault(subnet.network_id, subnet.cidr)
        return sorted(
            (
                Network(
                    id=str(n.id),
                    name=str(n.name or ""),
                    cidr=cidrs.get(n.id, ""),
                    is_external=bool(n.is_router_external),
                )
                for n in nets
            ),
            key=lambda n: (n.is_external, n.name, n.id),
        )

    def _choose_network(self) -> str:
        """What `create_server(auto_ip=True)` would pick: the project's own network, else a shared one."""
        with self._errors("choose a network"):
            nets = [n for n in self.conn.network.networks() if not n.is_router_external and n.status != "ERROR"]
        project_id = self.project_id
        own = sorted((n for n in nets if n.project_id == project_id), key=lambda n: (n.name or "", n.id))
        shared = sorted((n for n in nets if n.is_shared), key=lambda n: (n.name or "", n.id))
        if own or shared:
            return str((own or shared)[0].id)
        raise InvalidRequestError(
            "The OpenStack project has no network for servers: create one (with a subnet and a router to the "
            "external network) or choose a network."
        )

    # --- servers -------------------------------------------------------------------------------------------------
    def _flavor_id(self, flavor: Any) -> str:
        """Since microversion 2.47 a server shows its flavor by name only (original_name)."""
        if flavor is None:
            return ""
        if isinstance(flavor, dict):
            name, flavor_id = flavor.get("original_name"), flavor.get("id")
        else:  # openstacksdk's Flavor answers .id with the name when nova sent only original_name
            name, flavor_id = getattr(flavor, "original_name", None), flavor.id
        if not name:
            return str(flavor_id or "")
        if self._flavor_ids is None or name not in self._flavor_ids:
            with self._errors("list the flavors"):
                self._flavor_ids = {str(f.name): str(f.id) for f in self.conn.compute.flavors(details=False)}
        return self._flavor_ids.get(name, str(name))

    def _server(self, s: Any) -> Server:
        private: list[str] = []
        public: list[str] = []
        for addresses in (s.addresses or {}).values():
            for address in addresses:
                ip = address.get("addr")
                if not ip:
                    continue
                (public if address.get("OS-EXT-IPS:type") == "floating" else private).append(ip)
        for ip in (s.access_ipv4, s.access_ipv6):
            if ip and ip not in public and ip not in private:
                public.append(ip)
        fault = s.fault or {}
        image = s.image
        image_id = image.get("id") if isinstance(image, dict) else getattr(image, "id", None)
        state = _server_state(s.status, s.task_state)
        return Server(
            id=str(s.id),
            name=str(s.name or ""),
            state=state,
            size_id=self._flavor_id(s.flavor),
            image_id=str(image_id or ""),
            region=self.region_name or "",
            private_ips=tuple(private),
            public_ips=tuple(public),
            tags=_decode_tags(s.tags),
            created_at=_parse_time(s.created_at),
            fault=str(fault.get("message") or "") if state == ServerState.ERROR else "",
        )

    def _key_name(self, public_key: str, wanted: str | None = None) -> str:
        """Import the key under `wanted`, or once per project named by its fingerprint and reused."""
        name = wanted or "skyport-" + hashlib.sha256(public_key.strip().encode()).hexdigest()[:16]
        from openstack import exceptions as os_exc

        with self._errors("import the key pair"):
            try:
                self.conn.compute.get_keypair(name)
            except os_exc.NotFoundException:
                with contextlib.suppress(os_exc.ConflictException):  # imported meanwhile by another call
                    self.conn.compute.create_keypair(name=name, public_key=public_key.strip())
        return name

    def create_server(self, request: CreateServer) -> Server:
        tags = _encode_tags(request.tags)
        if request.idempotency_token:
            token_tag = _token_tag(request.idempotency_token)
            with self._errors("look for an earlier attempt"):
                earlier = [s for s in self.conn.compute.servers(details=True, tags=token_tag) if s.status != "DELETED"]
            if earlier:
                return self._server(earlier[0])
            tags.append(token_tag)
        if len(tags) > 50:
            raise InvalidRequestError("OpenStack allows at most 50 tags on a server.")
        network_id = request.network_id or self._choose_network()
        attrs: dict[str, Any] = {
            "name": request.name,
            "image_id": request.image_id,
            "flavor_id": request.size_id,
            "networks": [{"uuid": network_id}],
            "tags": tags,
        }
        if request.public_key:
            attrs["key_name"] = self._key_name(request.public_key, request.key_name)
        if request.firewall_id:
            attrs["security_groups"] = [{"name": request.firewall_id}]  # nova accepts the group's id here too
        if request.user_data:
            attrs["user_data"] = base64.b64encode(request.user_data.encode()).decode()
        with self._errors("create the server"):
            created = self.conn.compute.create_server(**attrs)
        try:
            return self.get_server(str(created.id))
        except NotFoundError:  # not readable yet: answer with what we asked for
            return Server(
                id=str(created.id),
                name=request.name,
                state=ServerState.BUILDING,
                size_id=request.size_id,
                image_id=request.image_id,
                region=self.region_name or "",
                tags=dict(request.tags),
            )

    def get_server(self, server_id: str) -> Server:
        with self._errors(f"find server {server_id}"):
            return self._server(self.conn.compute.get_server(server_id))

    def list_servers(self, *, tags: dict[str, str] | None = None) -> list[Server]:
        query: dict[str, Any] = {}
        if tags:
            query["tags"] = ",".join(_encode_tags(tags))
        with self._errors("list the servers"):
            # the generator follows nova's next links
            servers = [self._server(s) for s in self.conn.compute.servers(details=True, **query)]
        return [s for s in servers if s.state != ServerState.DELETED]

    def start_server(self, server_id: str) -> None:
        with self._errors(f"start server {server_id}"):
            self.conn.compute.start_server(server_id)

    def stop_server(self, server_id: str) -> None:
        with self._errors(f"stop server {server_id}"):
            self.conn.compute.stop_server(server_id)

    def reboot_server(self, server_id: str, *, hard: bool = False) -> None:
        with self._errors(f"reboot server {server_id}"):
            self.conn.compute.reboot_server(server_id, "HARD" if hard else "SOFT")

    def resize_server(self, server_id: str, size_id: str) -> None:
        with self._errors(f"resize server {server_id}"):
            self.conn.compute.resize_server(server_id, size_id)

    def confirm_resize(self, server_id: str) -> None:
        with self._errors(f"confirm the resize of server {server_id}"):
            self.conn.compute.confirm_server_resize(server_id)

    def delete_server(self, server_id: str) -> None:
        with self._errors(f"delete server {server_id}"):
            self.conn.compute.delete_server(server_id, ignore_missing=False)

    def ensure_firewall(self, name: str, rules: list[dict[str, Any]], *, tags: dict[str, str]) -> str:
        """A neutron security group of the project, found by name first (a retry reuses it), with one ingress rule
        per port (a rule already there is fine)."""
        from openstack import exceptions as os_exc

        with self._errors("create the security group"):
            group = self.conn.network.find_security_group(name, project_id=self.conn.current_project_id)
            if group is None:
                group = self.conn.network.create_security_group(
                    name=name, description="Opened by Skyport for a deployment")
                if tags:
                    with contextlib.suppress(os_exc.SDKException):  # tags are a label here, not a lookup key
                        self.conn.network.set_tags(group, _encode_tags(tags))
            for rule in rules:
                with contextlib.suppress(os_exc.ConflictException):  # the rule exists already
                    self.conn.network.create_security_group_rule(
                        security_group_id=group.id, direction="ingress", ethertype="IPv4",
                        protocol=rule.get("protocol", "tcp"), port_range_min=int(rule["port"]),
                        port_range_max=int(rule["port"]), remote_ip_prefix=rule.get("cidr", "0.0.0.0/0"),
                    )
        return str(group.id)

    def delete_firewall(self, name: str) -> None:
        from openstack import exceptions as os_exc

        with self._errors("delete the security group"):
            group = self.conn.network.find_security_group(name, project_id=self.conn.current_project_id)
            if group is None:
                return
            try:
                self.conn.network.delete_security_group(group, ignore_missing=True)
            except os_exc.ConflictException:  # a port of a server being deleted still uses it
                raise TransientError(f"Security group {name} is still in use: retry once its servers are gone.",
                                     provider_code="SecurityGroupInUse") from None

    def delete_key_pair(self, name: str) -> None:
        with self._errors("delete the key pair"):
            self.conn.compute.delete_keypair(name, ignore_missing=True)

    def console(self, server_id: str) -> Console:
        from openstack import exceptions as os_exc

        with self._errors(f"open a console on server {server_id}"):
            try:
                remote = self.conn.compute.create_console(server_id, console_type="novnc")
            except (os_exc.BadRequestException, os_exc.ConflictException, os_exc.HttpException) as exc:
                if getattr(exc, "status_code", None) == 404:
                    raise
                remote = None
            if remote and remote.get("url"):
                return Console(kind="url", url=str(remote["url"]))
            output = self.conn.compute.get_server_console_output(server_id) or {}
            return Console(kind="log", output=str(output.get("output") or ""))

    # --- public addresses --------------------------------------------------------------------------------------
    def _external_network_id(self) -> str:
        wanted = self.options.get("external_network")
        with self._errors("find the external network"):
            nets = sorted(
                (n for n in self.conn.network.networks(is_router_external=True)), key=lambda n: (n.name or "", n.id)
            )
        for n in nets:
            if not wanted or wanted in (n.id, n.name):
                return str(n.id)
        if wanted:
            raise NotFoundError(f"OpenStack has no external network {wanted!r} for floating IPs.")
        raise InvalidRequestError("The OpenStack project sees no external network to take floating IPs from.")

    def _neutron_extensions(self) -> set[str]:
        if self._extensions is None:
            with self._errors("list the networking extensions"):
                self._extensions = {str(e.alias) for e in self.conn.network.extensions()}
        return self._extensions

    def allocate_public_ip(self, *, tags: dict[str, str] | None = None) -> PublicIP:
        """The tags are in the floating IP's description, written by the create request itself (neutron refuses
        `tags` in a floating IP's POST even where it lists the `tag-creation` extension). Where neutron has tags
        (`standard-attr-tag`) they are also set right after, for operators; lookups rely only on the description."""
        network_id = self._external_network_id()
        encoded = _encode_tags(tags or {})
        description = _ip_description(encoded)
        with self._errors("allocate a floating IP"):
            ip = self.conn.network.create_ip(floating_network_id=network_id, description=description)
        if encoded and TAG_EXTENSION in self._neutron_extensions():
            with contextlib.suppress(Exception):  # the description already carries them
                self.conn.network.set_tags(ip, encoded)
        return PublicIP(id=str(ip.id), address=str(ip.floating_ip_address), server_id=None)

    def list_public_ips(self, *, tags: dict[str, str] | None = None) -> list[PublicIP]:
        """The project's floating IPs (all pages), filtered here by the tags in their descriptions: neutron's own
        tags filter would miss an address whose allocation was interrupted before its tags were set."""
        wanted = dict(tags or {})
        with self._errors("list the floating IPs"):
            ips = list(self.conn.network.ips(project_id=self.project_id))
        found = []
        for ip in ips:
            carried = _description_tags(ip.description)
            if any(carried.get(k) != v for k, v in wanted.items()):
                continue
            server_id = None
            if ip.port_id:
                with self._errors(f"find the port of floating IP {ip.id}"):
                    port = self.conn.network.get_port(ip.port_id)
                server_id = str(port.device_id) if port.device_id else None
            found.append(PublicIP(id=str(ip.id), address=str(ip.floating_ip_address), server_id=server_id))
        return sorted(found, key=lambda p: p.id)

    def attach_public_ip(self, ip_id: str, server_id: str) -> None:
        with self._errors(f"find server {server_id}"):
            server = self.conn.compute.get_server(server_id)
        if server.status == "ERROR":
            raise InvalidRequestError(f"Server {server_id} is in ERROR: no floating IP can be attached to it.")
        if server.status != "ACTIVE":
            raise TransientError(f"OpenStack server {server_id} is not active yet ({server.status}): retry later.")
        with self._errors(f"attach floating IP {ip_id}"):
            ports = [p for p in self.conn.network.ports(device_id=server_id) if p.fixed_ips]
            if not ports:
                raise TransientError(f"OpenStack server {server_id} has no port yet: retry later.")
            ip = self.conn.network.get_ip(ip_id)
            port = sorted(ports, key=lambda p: p.id)[0]
            if ip.port_id == port.id:
                return  # attached by an earlier attempt
            self.conn.network.update_ip(ip, port_id=port.id)

    def release_public_ip(self, ip_id: str) -> None:
        with self._errors(f"release floating IP {ip_id}"):
            self.conn.network.delete_ip(ip_id, ignore_missing=False)

    # --- images --------------------------------------------------------------------------------------------------
    # glance takes both; qcow2 first (smaller to send, nova boots it as it is)
    image_formats: ClassVar[tuple[str, ...]] = ("qcow2", "raw")
    # the upload returns as soon as glance has the data; becoming active is waited for by a parked step
    image_steps: ClassVar[tuple[str, ...]] = ("upload", "wait_active")

    def _create_image(self, upload: ImageUpload) -> Any:
        extra: dict[str, Any] = {"architecture": upload.arch} if upload.arch else {}
        if upload.min_disk_gb:
            extra["min_disk"] = int(upload.min_disk_gb)
        with self._errors(f"upload image {upload.name}"):
            return self.conn.image.create_image(
                upload.name,
                filename=upload.path,
                disk_format=upload.disk_format,
                container_format="bare",
                tags=[f"{k}={v}" for k, v in sorted(upload.tags.items())],
                allow_duplicates=True,
                wait=False,
                **extra,
            )

    def find_image(self, *, tags: dict[str, str]) -> Image | None:
        """glance filters by one tag server-side (the operation's, when given); all tags are checked here."""
        if not tags:
            return None
        wanted = [f"{k}={v}" for k, v in sorted(tags.items())]
        key = next((t for t in wanted if t.startswith("skyport:operation=")), wanted[0])
        with self._errors("look for an earlier upload"):
            for img in self.conn.image.images(tag=key):
                carried = set(img.tags or [])
                if set(wanted) <= carried and img.status not in ("killed", "deleted"):
                    return self._image(img)
        return None

    def image_step(self, step: str, upload: ImageUpload, state: dict[str, Any]) -> dict[str, Any]:
        if step == "upload":
            found = self.find_image(tags=upload.tags) if upload.tags else None
            if found is not None:
                return {"image_id": found.id}
            return {"image_id": str(self._create_image(upload).id)}
        if step == "wait_active":
            image_id = str(state["image_id"])
            with self._errors(f"check image {image_id}"):
                img = self.conn.image.get_image(image_id)
            status = str(img.status or "")
            if status == "active":
                return {"image_id": image_id, "status": status}
            if status in ("killed", "deleted", "pending_delete"):
                raise InvalidRequestError(f"OpenStack refused the image {upload.name!r} (glance status {status}).")
            raise ImagePending(f"glance status {status or 'unknown'}", delay=3.0)
        raise ValueError(f"unknown image step {step!r}")

    def upload_image(self, upload: ImageUpload) -> Image:
        img = self._create_image(upload)
        deadline = time.monotonic() + IMAGE_ACTIVE_TIMEOUT
        with self._errors(f"upload image {upload.name}"):
            while img.status not in ("active", "killed", "deleted") and time.monotonic() < deadline:
                time.sleep(0.5)
                img = self.conn.image.get_image(img.id)
        if img.status in ("killed", "deleted"):
            raise InvalidRequestError(f"OpenStack refused the image {upload.name!r} (status {img.status}).")
        return self._image(img)

    def delete_image(self, image_id: str) -> None:
        with self._errors(f"delete image {image_id}"):
            self.conn.image.delete_image(image_id, ignore_missing=False)

    # --- metrics: the stack has no telemetry service ---------------------------------------------------------
    def cpu_metrics(self, server_id: str, *, since: datetime.datetime) -> list[CpuSample]:
        return []

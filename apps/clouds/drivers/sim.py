"""Driver for the simulated cloud (apps.clouds.sim). Behaves like a provider: state transitions take time on the
sim's stored clock, quotas and capacity are enforced, injected faults fire, and every call is counted. Each call is
one transaction on the sim's own connection, so what it creates survives a rollback of the caller's transaction."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import math
import os
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

from django.db import transaction
from django.db.models import Count

from apps.clouds.drivers.base import (
    AuthError,
    CapacityError,
    CloudDriver,
    CloudError,
    Console,
    CpuSample,
    CreateServer,
    Image,
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
from apps.clouds.sim.models import SimCloud, SimFault, SimFirewall, SimPublicIP, SimServer
from apps.clouds.sim.router import SIM_DB
from apps.clouds.sim.services import api_key_hash

T = TypeVar("T")

ERRORS: dict[str, type[CloudError]] = {
    "transient": TransientError,
    "capacity": CapacityError,
    "quota": QuotaError,
    "not_found": NotFoundError,
    "invalid": InvalidRequestError,
    "auth": AuthError,
}
# transitional state → the duration key that times it
TRANSITIONS = {
    ServerState.BUILDING: "build",
    ServerState.STOPPING: "stop",
    ServerState.STARTING: "start",
    ServerState.REBOOTING: "reboot",
    ServerState.RESIZING: "resize",
    ServerState.DELETING: "delete",
}
# methods that do not need a region (account-level)
ACCOUNT_METHODS = {"validate_credentials", "list_regions"}


class SimulatedCrash(BaseException):
    """Raised after a call has taken effect, to simulate the caller's process dying before it recorded the result.
    A BaseException so that `except Exception` handlers do not swallow it, like a real kill."""


class SimDriver(CloudDriver):
    kind: ClassVar[str] = "sim"
    label: ClassVar[str] = "Simulated cloud"
    # like clouds that resize only stopped servers (EC2): three resumable steps
    resize_steps: ClassVar[tuple[str, ...]] = ("stop", "resize", "start")
    has_metrics: ClassVar[bool] = True

    # --- plumbing ------------------------------------------------------------------------------------------------

    def _call(self, method: str, action: Callable[[SimCloud], T]) -> T:
        """One provider call: count it, apply faults, check the key and region, then act, all in one transaction
        on the sim connection. Errors are raised after the counters are saved."""
        failure: CloudError | None = None
        crash = False
        with transaction.atomic(using=SIM_DB):
            try:
                cloud = SimCloud.objects.select_for_update().get(endpoint=self.endpoint or "")
            except SimCloud.DoesNotExist:
                raise InvalidRequestError(
                    f"No simulated cloud answers at {self.endpoint!r}: check the account's endpoint."
                ) from None
            cloud.calls += 1
            cloud.call_counts[method] = int(cloud.call_counts.get(method, 0)) + 1
            effects = self._fire_faults(cloud, method)
            self._effects = effects
            given = self.credentials.get("api_key", "")
            if not hmac.compare_digest(api_key_hash(given), cloud.api_key_hash):
                failure = AuthError(
                    "The simulated cloud rejected the API key (InvalidApiKey): enter the key again.",
                    provider_code="InvalidApiKey",
                )
            elif method not in ACCOUNT_METHODS and self.region not in cloud.regions:
                failure = InvalidRequestError(
                    f"Region {self.region!r} does not exist in this cloud; regions: {', '.join(cloud.regions)}."
                )
            elif effects.get("error") is not None:
                failure = effects["error"]
            result: Any = None
            if failure is None:
                try:
                    with transaction.atomic(using=SIM_DB):
                        result = action(cloud)
                except CloudError as exc:
                    failure = exc
                crash = bool(effects.get("crash"))
            cloud.save(update_fields=["calls", "call_counts", "clock_offset", "serial", "faults_possible"])
        if failure is not None:
            raise failure
        if crash:
            raise SimulatedCrash(f"simulated crash after {method}")
        return result

    def _fire_faults(self, cloud: SimCloud, method: str) -> dict[str, Any]:
        effects: dict[str, Any] = {}
        if not cloud.faults_possible:  # read with the cloud's lock; adding a fault sets it on the same row
            return effects
        active = list(SimFault.objects.filter(cloud=cloud, is_active=True))
        if not active:
            cloud.faults_possible = False  # saved with the call's counters
            return effects
        for fault in (f for f in active if f.method in (method, "*")):
            fault.seen += 1
            if fault.on_call is not None:
                fires = fault.seen == fault.on_call
            elif fault.rate is not None:
                fires = random.Random(f"{cloud.seed}:{fault.method}:{fault.kind}:{fault.seen}").random() < fault.rate  # noqa: S311
            else:
                fires = True
            if fires:
                fault.fired += 1
                if fault.times is not None:
                    fault.times -= 1
                    fault.is_active = fault.times > 0
                self._apply_fault(cloud, fault, method, effects)
            fault.save(update_fields=["seen", "fired", "times", "is_active"])
        return effects

    @staticmethod
    def _apply_fault(cloud: SimCloud, fault: SimFault, method: str, effects: dict[str, Any]) -> None:
        kind = fault.kind
        if kind == SimFault.Kind.LATENCY:
            cloud.clock_offset += fault.seconds
        elif kind == SimFault.Kind.AUTH:
            effects["error"] = AuthError(fault.message or "The simulated cloud rejected the API key (expired).")
        elif kind == SimFault.Kind.THROTTLE:
            effects["error"] = TransientError(
                fault.message or f"The simulated cloud throttled {method} (RequestLimitExceeded): retry later.",
                provider_code="RequestLimitExceeded",
                retry_after=fault.seconds or 1.0,
            )
        elif kind == SimFault.Kind.ERROR:
            cls = ERRORS.get(fault.error, TransientError)
            effects["error"] = cls(fault.message or f"The simulated cloud failed {method} ({fault.error or 'error'}).")
        elif kind == SimFault.Kind.DIE:
            effects["die_after"] = fault.seconds
            effects["die_reason"] = fault.message or "The server's host failed."
        elif kind == SimFault.Kind.STUCK:
            effects["stuck"] = True
        elif kind == SimFault.Kind.CRASH:
            effects["crash"] = True

    def _settle(self, cloud: SimCloud, server: SimServer) -> SimServer:
        """Bring a server up to the sim's clock: finished transitions end, dead servers turn to error."""
        now = cloud.now()
        changed = False
        if server.state != ServerState.DELETED and server.dies_at is not None and server.dies_at <= now:
            server.state, server.next_state, server.transition_ends_at = ServerState.ERROR, "", None
            server.fault = server.fault or "The server's host failed."
            server.dies_at = None
            changed = True
        if server.next_state and server.transition_ends_at is not None and server.transition_ends_at <= now:
            if server.state == ServerState.RESIZING and server.pending_size_id:
                server.size_id, server.pending_size_id = server.pending_size_id, ""
            if server.next_state == ServerState.DELETED:
                server.deleted_at = server.transition_ends_at
                SimPublicIP.objects.filter(server=server).update(server=None)
            server.state, server.next_state, server.transition_ends_at = server.next_state, "", None
            changed = True
        if changed:
            server.save()
        return server

    def _begin(self, cloud: SimCloud, server: SimServer, state: ServerState, then: ServerState) -> None:
        server.state, server.next_state = state, then
        if getattr(self, "_effects", {}).get("stuck"):
            server.transition_ends_at = None
        else:
            seconds = float(cloud.durations.get(TRANSITIONS[state], 10))
            server.transition_ends_at = cloud.now() + datetime.timedelta(seconds=seconds)

    def _server(self, cloud: SimCloud, server_id: str) -> SimServer:
        server = SimServer.objects.filter(cloud=cloud, region=self.region, server_id=server_id).first()
        if server is None:
            raise NotFoundError(f"Server {server_id} does not exist in {self.region}.", provider_code="NotFound")
        return self._settle(cloud, server)

    def _live_server(self, cloud: SimCloud, server_id: str) -> SimServer:
        server = self._server(cloud, server_id)
        if server.state == ServerState.DELETED:
            raise NotFoundError(f"Server {server_id} was deleted.", provider_code="NotFound")
        return server

    @staticmethod
    def _busy(server: SimServer, action: str) -> TransientError:
        return TransientError(
            f"Cannot {action} server {server.server_id} while it is {server.state}: retry when it settles.",
            provider_code="Conflict",
        )

    def _to_server(self, server: SimServer) -> Server:
        public = tuple(ip.address for ip in server.public_ips.filter(released=False))
        return Server(
            id=server.server_id,
            name=server.name,
            state=ServerState(server.state),
            size_id=server.size_id,
            image_id=server.image_id,
            region=server.region,
            private_ips=(server.private_ip,) if server.private_ip else (),
            public_ips=public,
            tags=dict(server.tags),
            created_at=server.created_at,
            fault=server.fault if server.state == ServerState.ERROR else "",
        )

    @staticmethod
    def _make_id(cloud: SimCloud, prefix: str) -> str:
        serial = cloud.next_serial()
        digest = hashlib.sha256(f"{cloud.seed}:{cloud.endpoint}:{serial}".encode()).hexdigest()
        return f"{prefix}-{digest[:12]}"

    # --- account and catalogue ---------------------------------------------------------------------------------

    def validate_credentials(self) -> None:
        self._call("validate_credentials", lambda cloud: None)

    def list_regions(self) -> list[Region]:
        return self._call(
            "list_regions", lambda cloud: [Region(id=r, name=r, zones=(f"{r}a", f"{r}b")) for r in cloud.regions]
        )

    def list_sizes(self) -> list[Size]:
        def action(cloud: SimCloud) -> list[Size]:
            return [
                Size(
                    id=s["id"],
                    name=s["name"],
                    vcpus=int(s["vcpus"]),
                    ram_mb=int(s["ram_mb"]),
                    disk_gb=int(s.get("disk_gb", 0)),
                    arch=s.get("arch", "x86_64"),
                    gpus=int(s.get("gpus", 0)),
                    price_per_hour=None if s.get("price_per_hour") is None else Decimal(str(s["price_per_hour"])),
                )
                for s in cloud.sizes
            ]

        return self._call("list_sizes", action)

    def list_images(self, *, owners: tuple[str, ...] = (), name_patterns: tuple[str, ...] = ()) -> list[Image]:
        import fnmatch

        def action(cloud: SimCloud) -> list[Image]:
            images = [
                Image(
                    id=i["id"],
                    name=i["name"],
                    os=i.get("os", ""),
                    arch=i.get("arch", "x86_64"),
                    owner=i.get("owner", "sim"),
                    is_public=bool(i.get("is_public", True)),
                    status=i.get("status", "available"),
                    min_disk_gb=int(i.get("min_disk_gb", 0)),
                    disk_format=i.get("disk_format", "qcow2"),
                )
                for i in cloud.images
            ]
            if owners or name_patterns:
                images = [
                    i for i in images if i.owner in owners or any(fnmatch.fnmatch(i.name, p) for p in name_patterns)
                ]
            return images

        return self._call("list_images", action)

    def list_networks(self) -> list[Network]:
        return self._call(
            "list_networks",
            lambda cloud: [
                Network(id=n["id"], name=n["name"], cidr=n.get("cidr", ""), is_external=bool(n.get("is_external")))
                for n in cloud.networks
            ],
        )

    # --- servers -------------------------------------------------------------------------------------------------

    def create_server(self, request: CreateServer) -> Server:
        def action(cloud: SimCloud) -> Server:
            if request.idempotency_token:
                # like EC2's ClientToken: the same token answers with the server it created the first time
                existing = SimServer.objects.filter(cloud=cloud, client_token=request.idempotency_token).first()
                if existing is not None:
                    return self._to_server(self._settle(cloud, existing))
            size = cloud.size(request.size_id)
            if size is None:
                raise InvalidRequestError(f"Size {request.size_id!r} does not exist in {self.region}.")
            if not any(i["id"] == request.image_id for i in cloud.images):
                raise InvalidRequestError(f"Image {request.image_id!r} does not exist in {self.region}.")
            networks = [n for n in cloud.networks if not n.get("is_external")]
            network = next((n for n in cloud.networks if n["id"] == request.network_id), None)
            if request.network_id and network is None:
                raise InvalidRequestError(f"Network {request.network_id!r} does not exist in {self.region}.")
            network = network or (networks[0] if networks else None)
            self._check_limits(cloud, vcpus=int(size["vcpus"]), ram_mb=int(size["ram_mb"]), instances=1)
            server_id = self._make_id(cloud, "srv")
            private_ip = ""
            if network and network.get("cidr"):
                net = ipaddress.ip_network(network["cidr"], strict=False)
                private_ip = str(net.network_address + 10 + cloud.serial % (net.num_addresses - 12))
            server = SimServer(
                cloud=cloud,
                server_id=server_id,
                name=request.name,
                region=self.region or "",
                size_id=request.size_id,
                image_id=request.image_id,
                network_id=network["id"] if network else "",
                private_ip=private_ip,
                public_key=request.public_key or "",
                firewall_id=request.firewall_id or "",
                user_data=request.user_data or "",
                tags=dict(request.tags),
                client_token=request.idempotency_token,
                created_at=cloud.now(),
                state=ServerState.BUILDING,
            )
            self._begin(cloud, server, ServerState.BUILDING, ServerState.RUNNING)
            effects = getattr(self, "_effects", {})
            if "die_after" in effects:
                server.dies_at = cloud.now() + datetime.timedelta(seconds=effects["die_after"])
                server.fault = effects["die_reason"]
            server.save()
            self._note_ready_in(cloud, server)
            return self._to_server(server)

        return self._call("create_server", action)

    def expected_ready_seconds(self, server: Server) -> float | None:
        """Seconds until a server this driver just created finishes building (None: unknown), so the create
        operation looks at it then instead of at once."""
        return getattr(self, "_ready_in", {}).get(server.id)

    def _note_ready_in(self, cloud: SimCloud, server: SimServer) -> None:
        if server.state == ServerState.BUILDING and server.transition_ends_at is not None:
            ready_in = (server.transition_ends_at - cloud.now()).total_seconds()
            self._ready_in = {server.server_id: max(ready_in, 0.0)}

    def _check_limits(self, cloud: SimCloud, *, vcpus: int, ram_mb: int, instances: int) -> None:
        live = SimServer.objects.filter(cloud=cloud, deleted_at__isnull=True).exclude(state=ServerState.DELETED)
        used = {"instances": 0, "vcpus": 0, "ram_mb": 0}
        region_vcpus = 0
        # counted per size and region in the database: a cloud with many servers is not read row by row per create
        groups = live.values("size_id", "pending_size_id", "region").annotate(n=Count("id")).order_by()
        for group in groups:
            size = cloud.size(group["pending_size_id"] or group["size_id"]) or {"vcpus": 0, "ram_mb": 0}
            count = int(group["n"])
            used["instances"] += count
            used["vcpus"] += int(size["vcpus"]) * count
            used["ram_mb"] += int(size["ram_mb"]) * count
            if group["region"] == self.region:
                region_vcpus += int(size["vcpus"]) * count
        wanted = {"instances": instances, "vcpus": vcpus, "ram_mb": ram_mb}
        for key, amount in wanted.items():
            limit = cloud.quotas.get(key)
            if limit is not None and amount > 0 and used[key] + amount > int(limit):
                raise QuotaError(
                    f"Quota exceeded for {key}: {used[key]} of {limit} in use, {amount} more requested.",
                    provider_code="QuotaExceeded",
                )
        capacity = cloud.capacity.get(self.region or "")
        if capacity is not None and vcpus > 0 and region_vcpus + vcpus > int(capacity):
            raise CapacityError(
                f"Region {self.region} has no capacity for {vcpus} more vCPUs right now: try another region or size.",
                provider_code="InsufficientCapacity",
            )

    def get_server(self, server_id: str) -> Server:
        return self._call("get_server", lambda cloud: self._to_server(self._server(cloud, server_id)))

    def list_servers(self, *, tags: dict[str, str] | None = None) -> list[Server]:
        def action(cloud: SimCloud) -> list[Server]:
            servers = []
            for row in SimServer.objects.filter(cloud=cloud, region=self.region):
                row = self._settle(cloud, row)
                if row.state == ServerState.DELETED:
                    continue
                if tags and any(row.tags.get(k) != v for k, v in tags.items()):
                    continue
                servers.append(self._to_server(row))
            return servers

        return self._call("list_servers", action)

    def start_server(self, server_id: str) -> None:
        def action(cloud: SimCloud) -> None:
            server = self._live_server(cloud, server_id)
            if server.state in (ServerState.RUNNING, ServerState.STARTING):
                return  # already done: a retried step is a no-op
            if server.state != ServerState.STOPPED:
                raise self._busy(server, "start")
            self._begin(cloud, server, ServerState.STARTING, ServerState.RUNNING)
            server.save()

        self._call("start_server", action)

    def stop_server(self, server_id: str) -> None:
        def action(cloud: SimCloud) -> None:
            server = self._live_server(cloud, server_id)
            if server.state in (ServerState.STOPPED, ServerState.STOPPING):
                return
            if server.state != ServerState.RUNNING:
                raise self._busy(server, "stop")
            self._begin(cloud, server, ServerState.STOPPING, ServerState.STOPPED)
            server.save()

        self._call("stop_server", action)

    def reboot_server(self, server_id: str, *, hard: bool = False) -> None:
        def action(cloud: SimCloud) -> None:
            server = self._live_server(cloud, server_id)
            if server.state == ServerState.REBOOTING:
                return
            if server.state != ServerState.RUNNING and not (hard and server.state == ServerState.ERROR):
                raise InvalidRequestError(f"Server {server_id} is {server.state}: only a running server reboots.")
            server.fault = ""
            self._begin(cloud, server, ServerState.REBOOTING, ServerState.RUNNING)
            server.save()

        self._call("reboot_server", action)

    def resize_server(self, server_id: str, size_id: str) -> None:
        def action(cloud: SimCloud) -> None:
            server = self._live_server(cloud, server_id)
            if server.size_id == size_id and not server.next_state:
                return  # already that size
            if server.state == ServerState.RESIZING and server.pending_size_id == size_id:
                return
            new, old = cloud.size(size_id), cloud.size(server.size_id)
            if new is None:
                raise InvalidRequestError(f"Size {size_id!r} does not exist in {self.region}.")
            if server.state not in (ServerState.RUNNING, ServerState.STOPPED):
                raise self._busy(server, "resize")
            old = old or {"vcpus": 0, "ram_mb": 0}
            self._check_limits(
                cloud,
                vcpus=int(new["vcpus"]) - int(old["vcpus"]),
                ram_mb=int(new["ram_mb"]) - int(old["ram_mb"]),
                instances=0,
            )
            server.pending_size_id = size_id
            self._begin(cloud, server, ServerState.RESIZING, ServerState(server.state))
            server.save()

        self._call("resize_server", action)

    def delete_server(self, server_id: str) -> None:
        def action(cloud: SimCloud) -> None:
            server = self._server(cloud, server_id)
            if server.state in (ServerState.DELETING, ServerState.DELETED):
                return
            server.dies_at = None
            self._begin(cloud, server, ServerState.DELETING, ServerState.DELETED)
            server.save()

        self._call("delete_server", action)

    def ensure_firewall(self, name: str, rules: list[dict[str, Any]], *, tags: dict[str, str]) -> str:
        def action(cloud: SimCloud) -> str:
            firewall = SimFirewall.objects.filter(cloud=cloud, region=self.region, name=name).first()
            if firewall is None:
                firewall = SimFirewall.objects.create(cloud=cloud, region=self.region or "", name=name,
                                                      firewall_id=self._make_id(cloud, "sg"), tags=dict(tags))
            wanted = [dict(r) for r in rules if dict(r) not in firewall.rules]
            if wanted:
                firewall.rules = [*firewall.rules, *wanted]
                firewall.save(update_fields=["rules"])
            return firewall.firewall_id

        return self._call("ensure_firewall", action)

    def delete_firewall(self, name: str) -> None:
        def action(cloud: SimCloud) -> None:
            firewall = SimFirewall.objects.filter(cloud=cloud, region=self.region, name=name).first()
            if firewall is None:
                return
            users = [s for s in SimServer.objects.filter(cloud=cloud, firewall_id=firewall.firewall_id)
                     if self._settle(cloud, s).state != ServerState.DELETED]
            if users:
                raise TransientError(f"Firewall {name} is still used by {users[0].server_id}: retry when it is gone.",
                                     provider_code="DependencyViolation")
            firewall.delete()

        return self._call("delete_firewall", action)

    def console(self, server_id: str) -> Console:
        def action(cloud: SimCloud) -> Console:
            server = self._live_server(cloud, server_id)
            lines = [
                f"[    0.000000] Linux version 6.8.0-sim ({server.image_id})",
                f"[    1.204113] cloud-init: hostname {server.name}",
                f"[    2.918532] cloud-init: network up, address {server.private_ip or 'none'}",
                f"[    3.100000] state: {server.state}",
            ]
            return Console(kind="log", output="\n".join(lines) + "\n")

        return self._call("console", action)

    # --- public addresses ----------------------------------------------------------------------------------------

    def allocate_public_ip(self, *, tags: dict[str, str] | None = None) -> PublicIP:
        def action(cloud: SimCloud) -> PublicIP:
            ip_id = self._make_id(cloud, "ip")
            address = ipaddress.ip_address("198.18.0.0") + cloud.serial % 131000  # 198.18.0.0/15, benchmarking
            row = SimPublicIP.objects.create(
                cloud=cloud, ip_id=ip_id, address=str(address), region=self.region or "", tags=dict(tags or {})
            )
            return PublicIP(id=row.ip_id, address=row.address)

        return self._call("allocate_public_ip", action)

    def list_public_ips(self, *, tags: dict[str, str] | None = None) -> list[PublicIP]:
        def action(cloud: SimCloud) -> list[PublicIP]:
            ips = []
            rows = SimPublicIP.objects.filter(cloud=cloud, region=self.region or "", released=False)
            for row in rows.select_related("server"):
                if tags and any(row.tags.get(k) != v for k, v in tags.items()):
                    continue
                server_id = row.server.server_id if row.server is not None else None
                ips.append(PublicIP(id=row.ip_id, address=row.address, server_id=server_id))
            return ips

        return self._call("list_public_ips", action)

    def _ip(self, cloud: SimCloud, ip_id: str) -> SimPublicIP:
        row = SimPublicIP.objects.filter(cloud=cloud, ip_id=ip_id, released=False).first()
        if row is None:
            raise NotFoundError(f"Public IP {ip_id} does not exist.", provider_code="NotFound")
        return row

    def attach_public_ip(self, ip_id: str, server_id: str) -> None:
        def action(cloud: SimCloud) -> None:
            row = self._ip(cloud, ip_id)
            server = self._live_server(cloud, server_id)
            if server.state not in (ServerState.RUNNING, ServerState.STOPPED):
                raise self._busy(server, "attach an address to")
            if row.server_id not in (None, server.pk):
                raise InvalidRequestError(f"Public IP {row.address} is attached to another server.")
            row.server = server
            row.save(update_fields=["server"])

        self._call("attach_public_ip", action)

    def release_public_ip(self, ip_id: str) -> None:
        def action(cloud: SimCloud) -> None:
            row = self._ip(cloud, ip_id)
            row.released, row.server = True, None
            row.save(update_fields=["released", "server"])

        self._call("release_public_ip", action)

    # --- images and metrics ----------------------------------------------------------------------------------------

    # any disk format a cloud takes: the push sends the master file as it is when it already is one of them
    image_formats: ClassVar[tuple[str, ...]] = ("qcow2", "raw", "vmdk", "vhd")

    @staticmethod
    def _to_image(row: dict[str, Any]) -> Image:
        return Image(
            id=row["id"],
            name=row["name"],
            os=row.get("os", ""),
            arch=row.get("arch", "x86_64"),
            owner=row.get("owner", "sim"),
            is_public=bool(row.get("is_public", True)),
            status=row.get("status", "available"),
            min_disk_gb=int(row.get("min_disk_gb", 0)),
            disk_format=row.get("disk_format", "qcow2"),
        )

    def find_image(self, *, tags: dict[str, str]) -> Image | None:
        def action(cloud: SimCloud) -> Image | None:
            for row in cloud.images:
                carried = row.get("tags") or {}
                if tags and all(carried.get(k) == v for k, v in tags.items()):
                    return self._to_image(row)
            return None

        return self._call("find_image", action)

    def upload_image(self, upload: ImageUpload) -> Image:
        """Keeps what a provider would show (name, format, size, tags), never the file's bytes."""

        def action(cloud: SimCloud) -> Image:
            if not os.path.isfile(upload.path):
                raise InvalidRequestError(f"Image file {os.path.basename(upload.path)} does not exist.")
            if upload.disk_format not in self.image_formats:
                raise InvalidRequestError(f"Disk format {upload.disk_format!r} is not supported.")
            image_id = self._make_id(cloud, "img")
            image: dict[str, Any] = {
                "id": image_id,
                "name": upload.name,
                "arch": upload.arch,
                "owner": "self",
                "is_public": False,
                "status": "available",
                "disk_format": upload.disk_format,
                "min_disk_gb": upload.min_disk_gb,
                "size_bytes": os.path.getsize(upload.path),
                "region": self.region or "",
                "tags": dict(upload.tags),
            }
            cloud.images = [*cloud.images, image]
            cloud.save(update_fields=["images"])
            return self._to_image(image)

        return self._call("upload_image", action)

    def delete_image(self, image_id: str) -> None:
        def action(cloud: SimCloud) -> None:
            kept = [i for i in cloud.images if i["id"] != image_id]
            if len(kept) == len(cloud.images):
                raise NotFoundError(f"Image {image_id} does not exist.")
            cloud.images = kept
            cloud.save(update_fields=["images"])

        self._call("delete_image", action)

    def cpu_metrics(self, server_id: str, *, since: datetime.datetime) -> list[CpuSample]:
        """One sample a minute of sim time, a deterministic series per server (seeded), while it exists."""

        def action(cloud: SimCloud) -> list[CpuSample]:
            server = self._server(cloud, server_id)
            end = server.deleted_at or cloud.now()
            start = max(since, server.created_at)
            if end <= start:
                return []
            base = int(hashlib.sha256(f"{cloud.seed}:{server.server_id}".encode()).hexdigest()[:4], 16) % 50 + 5
            minute0 = math.ceil(start.timestamp() / 60)
            samples = []
            for minute in range(minute0, int(end.timestamp() // 60) + 1)[-1440:]:
                noise = random.Random(f"{cloud.seed}:{server.server_id}:{minute}").uniform(-6, 6)  # noqa: S311
                percent = base + 20 * math.sin(minute / 45) + noise
                at = datetime.datetime.fromtimestamp(minute * 60, tz=datetime.UTC)
                samples.append(CpuSample(at=at, percent=round(min(100.0, max(0.0, percent)), 1)))
            return samples

        return self._call("cpu_metrics", action)

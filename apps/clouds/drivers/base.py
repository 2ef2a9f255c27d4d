"""The one driver interface. The rest of Skyport talks to clouds only through it and never imports libcloud or
openstacksdk. Drivers return plain dataclasses and raise the typed errors below, with messages an operator can act
on ("EC2 rejected the access key: AuthFailure — rotate the credentials under Clouds → prod-eu")."""

from __future__ import annotations

import datetime
import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

# --- errors ------------------------------------------------------------------------------------------------------


class CloudError(Exception):
    """A provider refused or failed. `message` is for people; `provider_code` is the provider's own code."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, provider_code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.provider_code = provider_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class AuthError(CloudError):
    """Credentials rejected or expired."""


class QuotaError(CloudError):
    """The provider's quota for the account is exhausted."""


class NotFoundError(CloudError):
    """The server, image, size or network does not exist (any more)."""


class CapacityError(CloudError):
    """The provider has no capacity for this request right now (try another region or size)."""

    retryable = True


class TransientError(CloudError):
    """Throttling, timeouts, 5xx: safe to retry later."""

    retryable = True


class InvalidRequestError(CloudError):
    """The request itself is wrong (bad size for this image, bad parameter, unsupported operation)."""


def scrub_secrets(message: str, credentials: dict[str, str]) -> str:
    """Remove credential values from a message that will be stored or shown (some providers echo them)."""
    for value in credentials.values():
        if isinstance(value, str) and len(value) >= 4:
            message = message.replace(value, "[redacted]")
    return message


# --- data --------------------------------------------------------------------------------------------------------


class ServerState(enum.StrEnum):
    PENDING = "pending"
    BUILDING = "building"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STARTING = "starting"
    REBOOTING = "rebooting"
    RESIZING = "resizing"
    VERIFY_RESIZE = "verify_resize"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Region:
    id: str
    name: str
    zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class Size:
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    arch: str = "x86_64"
    gpus: int = 0
    price_per_hour: Decimal | None = None


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    os: str = ""
    arch: str = "x86_64"
    owner: str = ""
    is_public: bool = False
    status: str = "available"
    min_disk_gb: int = 0
    disk_format: str = ""
    created_at: datetime.datetime | None = None


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    cidr: str = ""
    is_external: bool = False


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    state: ServerState
    size_id: str = ""
    image_id: str = ""
    region: str = ""
    private_ips: tuple[str, ...] = ()
    public_ips: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    created_at: datetime.datetime | None = None
    fault: str = ""  # the provider's reason for ERROR, when it gives one


@dataclass(frozen=True)
class CreateServer:
    name: str
    image_id: str
    size_id: str
    network_id: str | None = None
    public_key: str | None = None
    # the key pair to import `public_key` under, where the provider needs one: one per deployment, so deleting the
    # deployment removes it (delete_key_pair). None: the driver names it after the key.
    key_name: str | None = None
    # the firewall (security group) from ensure_firewall that opens the server's ports; None: the provider's default
    firewall_id: str | None = None
    # its name as given to ensure_firewall: a provider that takes groups by name (EC2's default VPC) needs no
    # look-up of the id before the create
    firewall_name: str | None = None
    user_data: str | None = None
    # the installation id and operation id go here (skyport:installation, skyport:operation): a retry after a
    # crash finds what the first attempt created instead of creating a second server
    tags: dict[str, str] = field(default_factory=dict)
    idempotency_token: str = ""
    want_public_ip: bool = True


@dataclass(frozen=True)
class PublicIP:
    id: str
    address: str
    server_id: str | None = None


@dataclass(frozen=True)
class Console:
    kind: str  # "url" (noVNC and friends) or "log" (serial output)
    url: str = ""
    output: str = ""


@dataclass(frozen=True)
class CpuSample:
    at: datetime.datetime
    percent: float


@dataclass(frozen=True)
class ImageUpload:
    name: str
    path: str  # local file, already in `disk_format`
    disk_format: str  # raw, qcow2, vmdk, vhd
    arch: str = "x86_64"
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    min_disk_gb: int = 0
    size_bytes: int | None = None


class ImagePending(Exception):
    """Raised by an image step that must wait for the provider (an import task still running): the Operation parks
    and runs the same step again in `delay` seconds, with `progress` (0-100) shown on the copy meanwhile."""

    def __init__(self, waiting_for: str, *, progress: int | None = None, delay: float = 5.0) -> None:
        super().__init__(waiting_for)
        self.waiting_for = waiting_for
        self.progress = progress
        self.delay = delay


# --- the interface -----------------------------------------------------------------------------------------------


class CloudDriver(ABC):
    """One account in one region. Constructed by `apps.clouds.drivers.driver_for(account, region)`.

    Mutating calls are made by the Operation protocol (apps/clouds/operations.py) with no database transaction open.
    Lists are complete: pagination is handled inside the driver.
    """

    kind: ClassVar[str]
    label: ClassVar[str]
    # steps of a resize, as this provider needs them (EC2: stop → resize → start; nova: resize → confirm_resize)
    resize_steps: ClassVar[tuple[str, ...]] = ("resize",)
    has_metrics: ClassVar[bool] = False

    def __init__(
        self,
        *,
        credentials: dict[str, str],
        region: str | None = None,
        endpoint: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.credentials = credentials
        self.region = region
        self.endpoint = endpoint
        self.options = options or {}

    def __repr__(self) -> str:  # never the credentials
        return f"<{type(self).__name__} region={self.region!r} endpoint={self.endpoint!r}>"

    # account
    @abstractmethod
    def validate_credentials(self) -> None: ...

    @abstractmethod
    def list_regions(self) -> list[Region]: ...

    # catalogue of the region
    @abstractmethod
    def list_sizes(self) -> list[Size]: ...

    @abstractmethod
    def list_images(self, *, owners: tuple[str, ...] = (), name_patterns: tuple[str, ...] = ()) -> list[Image]: ...

    @abstractmethod
    def list_networks(self) -> list[Network]: ...

    # servers
    @abstractmethod
    def create_server(self, request: CreateServer) -> Server: ...

    @abstractmethod
    def get_server(self, server_id: str) -> Server: ...

    @abstractmethod
    def list_servers(self, *, tags: dict[str, str] | None = None) -> list[Server]: ...

    def expected_ready_seconds(self, server: Server) -> float | None:
        """Seconds until a server this driver just created finishes building, when the provider says (None:
        unknown, the create operation looks at once)."""
        return None

    def get_servers(self, server_ids: Sequence[str]) -> dict[str, Server]:
        """The servers with these ids that the provider still knows, by id (a missing one is left out, not an
        error). Drivers whose API looks up several ids in one call override this loop."""
        found: dict[str, Server] = {}
        for server_id in server_ids:
            try:
                found[server_id] = self.get_server(server_id)
            except NotFoundError:
                continue
        return found

    @abstractmethod
    def start_server(self, server_id: str) -> None: ...

    @abstractmethod
    def stop_server(self, server_id: str) -> None: ...

    @abstractmethod
    def reboot_server(self, server_id: str, *, hard: bool = False) -> None: ...

    @abstractmethod
    def resize_server(self, server_id: str, size_id: str) -> None: ...

    def confirm_resize(self, server_id: str) -> None:  # noqa: B027 (optional step, a no-op for most providers)
        """Providers that stage a resize (nova's VERIFY_RESIZE) commit it here; others have nothing to do."""

    @abstractmethod
    def delete_server(self, server_id: str) -> None: ...

    @abstractmethod
    def console(self, server_id: str) -> Console: ...

    def delete_key_pair(self, name: str) -> None:  # noqa: B027 (providers without key pairs have nothing to do)
        """Remove a key pair Skyport imported (see CreateServer.key_name). One already gone is not an error."""

    # firewalls (security groups): the ports a blueprint opens
    def ensure_firewall(self, name: str, rules: list[dict[str, Any]], *, tags: dict[str, str]) -> str:
        """The id of the firewall named `name` allowing inbound `rules` ([{port, cidr, protocol}]), created (with
        `tags` where the provider tags them) when missing; safe to call again after a crash."""
        raise InvalidRequestError(f"{self.label} cannot open ports for a server through Skyport.")

    def delete_firewall(self, name: str) -> None:  # noqa: B027 (providers without firewalls have nothing to do)
        """Remove the firewall named `name` once no server uses it. One already gone is not an error; one still in
        use raises TransientError (its servers are still going away)."""

    # public addresses
    @abstractmethod
    def allocate_public_ip(self, *, tags: dict[str, str] | None = None) -> PublicIP:
        """Allocate an address carrying `tags` from its creation on (the protocol passes skyport:installation and
        skyport:operation), so that a retry after a crash finds it with `list_public_ips(tags=...)`."""

    @abstractmethod
    def list_public_ips(self, *, tags: dict[str, str] | None = None) -> list[PublicIP]:
        """The addresses allocated in the region (released ones left out), all pages; `tags` are ANDed."""

    @abstractmethod
    def attach_public_ip(self, ip_id: str, server_id: str) -> None: ...

    @abstractmethod
    def release_public_ip(self, ip_id: str) -> None: ...

    # images
    # What each provider needs, best first: the push converts the master file to the first format listed.
    image_formats: ClassVar[tuple[str, ...]] = ("qcow2", "raw")
    # A push runs these steps one by one through the Operation protocol (one committed step each). Each gets the
    # upload and the state committed by the steps before it, returns what to add to that state, and raises
    # ImagePending to be called again later. The last step's state holds "image_id". Steps must be safe to run
    # again after a crash: what they create carries `upload.tags` (installation + operation ids) and is looked up
    # by them first.
    image_steps: ClassVar[tuple[str, ...]] = ("upload",)

    def image_step(self, step: str, upload: ImageUpload, state: dict[str, Any]) -> dict[str, Any]:
        if step != "upload":
            raise ValueError(f"unknown image step {step!r}")
        found = self.find_image(tags=upload.tags) if upload.tags else None
        image = found or self.upload_image(upload)
        return {"image_id": image.id}

    def find_image(self, *, tags: dict[str, str]) -> Image | None:
        """The image an earlier attempt uploaded with these tags, if the provider has it."""
        return None

    @abstractmethod
    def upload_image(self, upload: ImageUpload) -> Image: ...

    def delete_image(self, image_id: str) -> None:
        """Remove an image this installation uploaded (and what only it used, e.g. an EC2 snapshot). An image that
        is already gone raises NotFoundError."""
        raise InvalidRequestError(f"{self.label} images cannot be deleted through Skyport.")

    # metrics
    def cpu_metrics(self, server_id: str, *, since: datetime.datetime) -> list[CpuSample]:
        return []

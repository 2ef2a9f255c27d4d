"""Apache Libcloud drivers: `EC2Driver` (Amazon EC2, and EC2-compatible endpoints) and `LibcloudDriver` (any libcloud
compute provider named in `options["provider"]`).

Credentials: EC2 takes {"access_key", "secret_key"} ("access_key_id"/"secret_access_key" are accepted too, plus an
optional "session_token"); the generic driver takes {"key", "secret"} as libcloud's driver constructors do. Neither
key ever appears in a message or repr.

libcloud 3.9.1's EC2 driver has a few bugs that also bite against real AWS; `SkyportEC2NodeDriver` fixes them in place:
0-based `ResourceId.0`/`Tag.0` on CreateTags/DeleteTags (the API is 1-based), an unnumbered `KeyName` on
DescribeKeyPairs (ignored by the API, so the wrong key comes back), DescribeInstances read as a single page
(nextToken ignored, so lists stop at 100 reservations) and Elastic IPs listed twice on a node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import inspect
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace
from typing import Any, ClassVar
from urllib.parse import urlsplit

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
    scrub_secrets,
)

try:  # libcloud is imported lazily by the registry; the import here only runs when an account uses it
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError, ProviderError
    from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NetworkSubnet, EC2NodeDriver
    from libcloud.compute.types import KeyPairDoesNotExistError, NodeState
    from libcloud.utils.publickey import get_pubkey_ssh2_fingerprint
    from libcloud.utils.xml import findall, findtext
except ImportError as exc:  # pragma: no cover - the dependency is in the project's requirements
    raise ImportError("apache-libcloud is required for the ec2 and libcloud cloud types") from exc

import requests

log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 60  # per HTTP call; far below apps.clouds.operations.LEASE_SECONDS

# --- error mapping -----------------------------------------------------------------------------------------------

AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "OptInRequired",
        "ExpiredToken",
        "RequestExpired",
    }
)
PERMISSION_CODES = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "AddressLimitExceeded",
        "ResourceLimitExceeded",
        "VolumeLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "InsufficientAddressCapacity",
    }
)
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientFreeAddressesInSubnet",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ServiceUnavailable",
        "Unavailable",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
    }
)
# "Code: message" lines, as libcloud's EC2Response.parse_error joins them
_CODE_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9.]*):\s*(.*)$")


def _split_provider_message(text: str) -> tuple[str, str]:
    for line in text.splitlines():
        match = _CODE_LINE.match(line)
        if match:
            return match.group(1), match.group(2).strip()
    return "", text.strip()


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text[:400]


# --- the product EC2 node driver (libcloud fixes) ----------------------------------------------------------------


class SkyportEC2NodeDriver(EC2NodeDriver):  # type: ignore[misc]
    """libcloud's EC2 driver with the request-format fixes listed in the module docstring; each one is what the EC2
    API reference specifies, so it is valid against AWS and against EC2-compatible endpoints alike."""

    # DescribeInstances pages by reservation; 1000 is the API's maximum page size
    PAGE_SIZE = 1000

    def list_nodes(self, ex_node_ids: Any = None, ex_filters: Any = None) -> list[Any]:
        params: dict[str, Any] = {"Action": "DescribeInstances"}
        if ex_node_ids:
            # the API refuses MaxResults together with InstanceId.N; an id list is a single page anyway
            params.update(self._pathlist("InstanceId", ex_node_ids))
        else:
            params["MaxResults"] = str(self.PAGE_SIZE)
        if ex_filters:
            params.update(self._build_filters(ex_filters))
        nodes: list[Any] = []
        token: str | None = None
        while True:
            page = dict(params, NextToken=token) if token else params
            elem = self.connection.request(self.path, params=page).object
            for reservation in findall(element=elem, xpath="reservationSet/item", namespace=NAMESPACE):
                nodes += self._to_nodes(reservation, "instancesSet/item")
            token = findtext(element=elem, xpath="nextToken", namespace=NAMESPACE)
            if not token:
                break
        self._merge_elastic_ips(nodes)
        return nodes

    def _merge_elastic_ips(self, nodes: list[Any]) -> None:
        """One DescribeAddresses for the whole list; an associated EIP is usually also the node's ipAddress, so the
        addresses are de-duplicated."""
        if not nodes:
            return
        by_instance: dict[str, list[str]] = {}
        for address in self.ex_describe_all_addresses(only_associated=True):
            by_instance.setdefault(address.instance_id, []).append(address.ip)
        for node in nodes:
            for ip in by_instance.get(node.id, []):
                if ip not in node.public_ips:
                    node.public_ips.append(ip)

    def _tag_params(self, action: str, resource_id: str, tags: Mapping[str, str | None]) -> dict[str, str]:
        params = {"Action": action, "ResourceId.1": resource_id}
        for index, (key, value) in enumerate(tags.items(), start=1):
            params[f"Tag.{index}.Key"] = key
            if value is not None:
                params[f"Tag.{index}.Value"] = value
        return params

    def ex_create_tags(self, resource: Any, tags: dict[str, str]) -> bool:
        if not tags:
            return True
        res = self.connection.request(self.path, params=self._tag_params("CreateTags", resource.id, tags)).object
        return bool(self._get_boolean(res))

    def ex_delete_tags(self, resource: Any, tags: dict[str, str | None]) -> bool:
        if not tags:
            return True
        res = self.connection.request(self.path, params=self._tag_params("DeleteTags", resource.id, tags)).object
        return bool(self._get_boolean(res))

    def get_key_pair(self, name: str) -> Any:
        params = {"Action": "DescribeKeyPairs", "KeyName.1": name}
        response = self.connection.request(self.path, params=params)
        elems = findall(element=response.object, xpath="keySet/item", namespace=NAMESPACE)
        pairs = self._to_key_pairs(elems=elems)
        if not pairs:
            raise KeyPairDoesNotExistError(name=name, driver=self)
        return pairs[0]


# --- helpers ------------------------------------------------------------------------------------------------------

EC2_STATES: dict[str, ServerState] = {
    "pending": ServerState.BUILDING,
    "running": ServerState.RUNNING,
    "stopping": ServerState.STOPPING,
    "stopped": ServerState.STOPPED,
    "shutting-down": ServerState.DELETING,
    "terminated": ServerState.DELETED,
}
LIVE_EC2_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

LIBCLOUD_STATES: dict[str, ServerState] = {
    NodeState.RUNNING: ServerState.RUNNING,
    NodeState.STARTING: ServerState.STARTING,
    NodeState.REBOOTING: ServerState.REBOOTING,
    NodeState.TERMINATED: ServerState.DELETED,
    NodeState.PENDING: ServerState.BUILDING,
    NodeState.STOPPING: ServerState.STOPPING,
    NodeState.STOPPED: ServerState.STOPPED,
    NodeState.SUSPENDED: ServerState.STOPPED,
    NodeState.PAUSED: ServerState.STOPPED,
    NodeState.ERROR: ServerState.ERROR,
    NodeState.RECONFIGURING: ServerState.RESIZING,
}

# Graviton families carry a "g" after the generation digit (m6g, c7gn, t4g, r6gd, x2gd, im4gn, is4gen); a1 is
# Graviton 1. The pricing table's physicalProcessor is the first source, this is the fallback.
_ARM_FAMILY = re.compile(r"^(a1|[a-z]+\d+[a-z]*g[a-z]*)$")


def ec2_size_arch(size_id: str, processor: str = "") -> str:
    if "graviton" in processor.lower():
        return "arm64"
    family = size_id.split(".", 1)[0]
    return "arm64" if _ARM_FAMILY.match(family) and not family.startswith("mac") else "x86_64"


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _price(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        return Decimal(str(value)).quantize(Decimal("0.000001"))
    except (InvalidOperation, ValueError):
        return None


def _parse_time(value: Any) -> datetime.datetime | None:
    """A plain UTC datetime (libcloud hands out its own tzinfo class)."""
    if not value:
        return None
    if not isinstance(value, datetime.datetime):
        try:
            value = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return value.astimezone(datetime.UTC) if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def _endpoint_kwargs(endpoint: str) -> dict[str, Any]:
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InvalidRequestError(f"The endpoint {endpoint!r} is not an http(s) URL.")
    secure = url.scheme == "https"
    return {"host": url.hostname, "secure": secure, "port": url.port or (443 if secure else 80)}


def client_token(token: str) -> str:
    """EC2 ClientToken: at most 64 ASCII characters; longer tokens are hashed so the same token stays the same."""
    if token and len(token) <= 64 and token.isascii():
        return token
    return hashlib.sha256(token.encode()).hexdigest()


# --- the generic libcloud driver ----------------------------------------------------------------------------------


class LibcloudDriver(CloudDriver):
    """Any libcloud compute provider by name (options["provider"], e.g. "dummy", "linode", "digital_ocean").

    Generic means lowest common denominator: lists, create/destroy, start/stop/reboot. Tags, resize, console, public
    IPs and image upload depend on the provider and are refused with an InvalidRequestError naming the provider.
    Extra constructor arguments for the libcloud driver (never secrets) go in options["driver_kwargs"].
    """

    kind = "libcloud"
    label = "Apache Libcloud"
    secret_field: ClassVar[str] = "secret"
    provider_label: str = "The cloud"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._node_driver: Any = None
        self._lock = threading.Lock()
        provider = str(self.options.get("provider") or "")
        if type(self) is LibcloudDriver:
            self.provider_label = f"The libcloud provider {provider!r}" if provider else "The cloud"

    def __str__(self) -> str:
        return repr(self)

    # --- plumbing

    @property
    def _secrets(self) -> tuple[str, ...]:
        # every credential value (a generic provider's "key" may itself be an API token), longest first
        return tuple(sorted((str(v) for v in self.credentials.values() if v and len(str(v)) >= 6), key=len)[::-1])

    @property
    def node_driver(self) -> Any:
        """The libcloud driver object, built on first use (building it never calls the provider)."""
        with self._lock:
            if self._node_driver is None:
                with self._errors("connecting"):
                    self._node_driver = self._build_node_driver()
                    # a hung call must end well before the Operation lease, or a second worker could take over
                    self._node_driver.connection.timeout = CALL_TIMEOUT_SECONDS
            return self._node_driver

    def _build_node_driver(self) -> Any:
        from libcloud.compute.providers import get_driver

        provider = str(self.options.get("provider") or "")
        if not provider:
            raise InvalidRequestError("Choose the libcloud provider (options: provider), e.g. 'linode'.")
        try:
            cls = get_driver(provider)
        except (AttributeError, LibcloudError) as exc:
            raise InvalidRequestError(f"libcloud has no compute provider named {provider!r}.") from exc
        params = inspect.signature(cls.__init__).parameters
        args = [self.credentials.get("key", "")]
        if self.credentials.get("secret") and len(params) > 2:  # some drivers (Dummy) take a single credential
            args.append(self.credentials["secret"])
        # driver arguments: options["driver_kwargs"], or top-level options the driver's constructor names
        kwargs = {k: v for k, v in self.options.items() if k in params and k not in ("self", "key", "secret")}
        kwargs.update(self.options.get("driver_kwargs") or {})
        if self.region and "region" not in kwargs and "region" in params:
            kwargs["region"] = self.region
        if self.endpoint and "host" in params:
            kwargs.update(_endpoint_kwargs(self.endpoint))
        return cls(*args, **kwargs)

    def _map_error(self, exc: BaseException, doing: str) -> CloudError:
        """A libcloud/requests exception → one of our typed errors, with a message an operator can act on."""
        who = self.provider_label
        if isinstance(exc, CloudError):
            return exc
        if isinstance(exc, RateLimitReachedError):
            return TransientError(
                f"{who} is throttling requests; Skyport will retry shortly.",
                provider_code="RateLimitExceeded",
                retry_after=getattr(exc, "retry_after", None) or None,
            )
        if isinstance(exc, requests.Timeout):
            return TransientError(f"{who} did not answer in time while {doing}; Skyport will retry.")
        if isinstance(exc, requests.ConnectionError | ConnectionError | TimeoutError):
            return TransientError(f"{who} could not be reached while {doing}: check the endpoint and the network.")
        if isinstance(exc, KeyPairDoesNotExistError):
            return NotFoundError(f"{who} has no such key pair.", provider_code="InvalidKeyPair.NotFound")
        if isinstance(exc, MalformedResponseError):
            return TransientError(f"{who} sent an unreadable response while {doing} (a provider-side error).")
        status: int | None = None
        if isinstance(exc, InvalidCredsError):
            text, status = str(exc.value), 401
        elif isinstance(exc, ProviderError):
            text, status = str(exc.value), getattr(exc, "http_code", None)
        elif isinstance(exc, BaseHTTPError):
            text, status = str(exc.message), _int(exc.code) or None
        elif isinstance(exc, LibcloudError):
            text = str(exc.value)
        elif isinstance(exc, ValueError | AttributeError):
            return InvalidRequestError(f"{who} refused the request while {doing}: {_scrub(str(exc), self._secrets)}")
        else:
            return CloudError(f"{who} failed while {doing}: {type(exc).__name__}")
        code, message = _split_provider_message(_scrub(text, self._secrets))
        return self._typed_error(code, message, status, doing)

    def _typed_error(self, code: str, message: str, status: int | None, doing: str) -> CloudError:
        who = self.provider_label
        detail = f"{code} — {message}" if code and message else (code or message or f"HTTP {status}")
        if code in AUTH_CODES or (not code and status in (401, 403)) or status == 401:
            return AuthError(
                f"{self.auth_subject} rejected the access key: {code or 'AuthFailure'}"
                " — check or rotate the credentials",
                provider_code=code or None,
            )
        if code in PERMISSION_CODES:
            return AuthError(
                f"{who} refused: the credentials lack permission for {doing} ({code}) — grant it to the key's user",
                provider_code=code,
            )
        if code in QUOTA_CODES:
            return QuotaError(f"{who} quota reached: {detail}. Raise the limit or free resources.", provider_code=code)
        if code in CAPACITY_CODES:
            return CapacityError(
                f"{who} has no capacity right now: {detail}. Try another size or zone.", provider_code=code
            )
        if code in TRANSIENT_CODES or (status is not None and status >= 500) or status == 429:
            return TransientError(
                f"{who} is busy or unavailable ({code or status}) while {doing}; Skyport will retry.",
                provider_code=code or None,
            )
        if code.endswith(".NotFound") or code == "NotFound" or status == 404:
            return NotFoundError(f"{who} could not find it: {detail}", provider_code=code or None)
        return InvalidRequestError(f"{who} refused the request while {doing}: {detail}", provider_code=code or None)

    @property
    def auth_subject(self) -> str:
        return self.provider_label

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CloudError:
            raise
        except Exception as exc:  # every provider failure leaves the driver as a typed error
            # `from None`: the libcloud exception's repr may carry the driver object; the code is in the message
            raise self._map_error(exc, doing) from None

    # --- conversions

    def _state(self, node: Any) -> ServerState:
        return LIBCLOUD_STATES.get(node.state, ServerState.UNKNOWN)

    def _to_server(self, node: Any) -> Server:
        extra = node.extra or {}
        tags = extra.get("tags") or extra.get("metadata") or {}
        size = getattr(node, "size", None)
        image = getattr(node, "image", None)
        return Server(
            id=str(node.id),
            name=str(node.name or node.id),
            state=self._state(node),
            size_id=str(getattr(size, "id", "") or extra.get("instance_type") or extra.get("size") or ""),
            image_id=str(getattr(image, "id", "") or extra.get("image_id") or extra.get("image") or ""),
            region=self.region or "",
            private_ips=tuple(dict.fromkeys(node.private_ips or [])),
            public_ips=tuple(dict.fromkeys(node.public_ips or [])),
            tags={str(k): str(v) for k, v in tags.items() if k != "Name" and v is not None}
            if isinstance(tags, dict)
            else {},
            created_at=_parse_time(getattr(node, "created_at", None)),
        )

    def _to_size(self, size: Any) -> Size:
        extra = size.extra or {}
        return Size(
            id=str(size.id),
            name=str(size.name or size.id),
            vcpus=_int(extra.get("vcpu") or extra.get("vcpus") or extra.get("cpu") or extra.get("cpus")),
            ram_mb=_int(size.ram),
            disk_gb=_int(size.disk),
            gpus=_int(extra.get("gpu") or extra.get("gpus")),
            price_per_hour=_price(size.price),
        )

    def _to_image(self, image: Any) -> Image:
        extra = image.extra or {}
        return Image(
            id=str(image.id),
            name=str(image.name or image.id),
            arch=str(extra.get("architecture") or "x86_64"),
            os=str(extra.get("platform") or extra.get("os") or ""),
        )

    # --- account

    def validate_credentials(self) -> None:
        with self._errors("checking the credentials"):
            self.node_driver.list_locations()

    def list_regions(self) -> list[Region]:
        with self._errors("listing locations"):
            locations = self.node_driver.list_locations()
        return [Region(id=str(loc.id), name=str(loc.name or loc.id)) for loc in locations]

    # --- catalogue

    def list_sizes(self) -> list[Size]:
        with self._errors("listing sizes"):
            return [self._to_size(s) for s in self.node_driver.list_sizes()]

    def list_images(self, *, owners: tuple[str, ...] = (), name_patterns: tuple[str, ...] = ()) -> list[Image]:
        with self._errors("listing images"):
            images = [self._to_image(i) for i in self.node_driver.list_images()]
        if name_patterns:
            import fnmatch

            images = [i for i in images if any(fnmatch.fnmatch(i.name, p) for p in name_patterns)]
        return images

    def list_networks(self) -> list[Network]:
        return []

    # --- servers

    def _find_node(self, server_id: str) -> Any:
        with self._errors("looking up the server"):
            for node in self.node_driver.list_nodes():
                if str(node.id) == server_id:
                    return node
        raise NotFoundError(f"{self.provider_label} has no server {server_id}.")

    def create_server(self, request: CreateServer) -> Server:
        nd = self.node_driver
        # Tags set at creation are how a retry after a crash finds what the first attempt created; a provider
        # that cannot take them could end up with two servers, so Skyport does not create servers there.
        if "ex_metadata" not in inspect.signature(nd.create_node).parameters:
            raise InvalidRequestError(
                f"{self.provider_label} cannot tag a server when creating it, which Skyport needs to be sure a retry "
                "never creates a second server: launching there is not supported."
            )
        tags = dict(request.tags)
        with self._errors("creating the server"):
            size = next((s for s in nd.list_sizes() if str(s.id) == request.size_id), None)
            image = next((i for i in nd.list_images() if str(i.id) == request.image_id), None)
            if size is None:
                raise NotFoundError(f"{self.provider_label} has no size {request.size_id!r}.")
            if image is None:
                raise NotFoundError(f"{self.provider_label} has no image {request.image_id!r}.")
            kwargs: dict[str, Any] = {"name": request.name, "size": size, "image": image, "ex_metadata": tags}
            if request.public_key and "ssh_key" in (nd.features or {}).get("create_node", []):
                from libcloud.compute.base import NodeAuthSSHKey

                kwargs["auth"] = NodeAuthSSHKey(request.public_key)
            node = nd.create_node(**kwargs)
        return self._to_server(node)

    def get_server(self, server_id: str) -> Server:
        return self._to_server(self._find_node(server_id))

    def list_servers(self, *, tags: dict[str, str] | None = None) -> list[Server]:
        with self._errors("listing servers"):
            servers = [self._to_server(n) for n in self.node_driver.list_nodes()]
        servers = [s for s in servers if s.state != ServerState.DELETED]
        if tags:
            servers = [s for s in servers if all(s.tags.get(k) == v for k, v in tags.items())]
        return servers

    def start_server(self, server_id: str) -> None:
        node = self._find_node(server_id)
        with self._errors("starting the server"):
            self.node_driver.start_node(node)

    def stop_server(self, server_id: str) -> None:
        node = self._find_node(server_id)
        with self._errors("stopping the server"):
            self.node_driver.stop_node(node)

    def reboot_server(self, server_id: str, *, hard: bool = False) -> None:
        node = self._find_node(server_id)
        with self._errors("rebooting the server"):
            self.node_driver.reboot_node(node)

    def resize_server(self, server_id: str, size_id: str) -> None:
        raise self._unsupported("resizing servers")

    def delete_server(self, server_id: str) -> None:
        node = self._find_node(server_id)
        with self._errors("deleting the server"):
            self.node_driver.destroy_node(node)

    def console(self, server_id: str) -> Console:
        raise self._unsupported("consoles")

    # --- public addresses

    def allocate_public_ip(self, *, tags: dict[str, str] | None = None) -> PublicIP:
        raise self._unsupported("public IP addresses")

    def list_public_ips(self, *, tags: dict[str, str] | None = None) -> list[PublicIP]:
        # this driver allocates no addresses, so none can be ours
        return []

    def attach_public_ip(self, ip_id: str, server_id: str) -> None:
        raise self._unsupported("public IP addresses")

    def release_public_ip(self, ip_id: str) -> None:
        raise self._unsupported("public IP addresses")

    # --- images

    def upload_image(self, upload: ImageUpload) -> Image:
        raise self._unsupported("image upload")

    def _unsupported(self, what: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"{self.provider_label} does not support {what} through the generic libcloud driver."
        )


# --- EC2 ----------------------------------------------------------------------------------------------------------


@functools.cache
def _ec2_sizes(region: str) -> tuple[Size, ...]:
    """libcloud's bundled EC2 size table and Linux on-demand prices (no API call; ~30 ms, so once per process)."""
    from libcloud.compute.constants.ec2_instance_types import INSTANCE_TYPES
    from libcloud.compute.constants.ec2_region_details_complete import REGION_DETAILS
    from libcloud.pricing import get_size_price

    details = REGION_DETAILS.get(region)
    if details is None:
        return ()
    sizes = []
    for size_id in details["instance_types"]:
        attrs: Any = INSTANCE_TYPES.get(size_id)
        if attrs is None:
            continue
        extra = attrs.get("extra", {})
        if extra.get("currentGeneration") == "No":
            continue  # previous generations are not offered to new launches
        try:
            price = get_size_price(driver_type="compute", driver_name="ec2_linux", size_id=size_id, region=region)
        except KeyError:
            price = None
        sizes.append(
            Size(
                id=size_id,
                name=size_id,
                vcpus=_int(extra.get("vcpu")),
                ram_mb=_int(attrs.get("ram")),
                disk_gb=_int(attrs.get("disk")),
                arch=ec2_size_arch(size_id, str(extra.get("physicalProcessor") or "")),
                gpus=_int(extra.get("gpu")),
                price_per_hour=_price(price),
            )
        )
    return tuple(sorted(sizes, key=lambda s: s.id))


# --- EC2 image import (VM Import: S3 → ImportSnapshot → RegisterImage) ---------------------------------------------

TAG_INSTALLATION = "skyport:installation"  # the same keys as apps.clouds.operations puts on everything it creates
TAG_OPERATION = "skyport:operation"
IMPORT_POLL_SECONDS = 15  # snapshot imports take minutes; polling faster only spends API calls
S3_PART_BYTES = 64 * 1024 * 1024
# AMI names: 3-128 characters of letters, digits and ( ) [ ] space . / - ' @ _
_AMI_NAME_BAD = re.compile(r"[^a-zA-Z0-9()\[\] ./\-'@_]")
_EC2_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}
# boto3's S3UploadFailedError carries the S3 error only as text: "... (NoSuchBucket) when calling the PutObject
# operation: The specified bucket does not exist"
_BOTO_ERROR_TEXT = re.compile(r"\(([A-Za-z][A-Za-z0-9.]*)\) when calling the \w+ operation(?: \([^)]*\))?: (.*)$", re.S)


def ami_name(name: str, operation: str = "") -> str:
    """The deterministic AMI name of a push: the image name made valid for EC2, then the operation id (so a retry
    finds the AMI an earlier attempt registered, and two pushes of the same image never collide)."""
    suffix = f"-{operation}" if operation else ""
    base = re.sub(r"\s+", " ", _AMI_NAME_BAD.sub("-", name)).strip() or "image"
    result = base[: 128 - len(suffix)].rstrip() + suffix
    return result if len(result) >= 3 else f"skyport-{result}"


def _ec2_arch(arch: str) -> str:
    if arch.lower() not in _EC2_ARCH:
        raise InvalidRequestError(f"EC2 has no {arch!r} images: choose x86_64 or arm64.")
    return _EC2_ARCH[arch.lower()]


@dataclasses.dataclass(frozen=True)
class ImportStatus:
    """One look at an EC2 snapshot import task (DescribeImportSnapshotTasks' SnapshotTaskDetail)."""

    state: str  # active | completed | deleting | deleted
    progress: int | None = None  # percent, while active
    snapshot_id: str | None = None  # once completed
    message: str = ""  # EC2's StatusMessage: the stage while active, the reason when deleted


class ImageImporter:
    """EC2's VM Import calls for snapshots: ImportSnapshot from an S3 object, and DescribeImportSnapshotTasks.

    `EC2Driver.image_importer` holds the instance the driver uses; an EC2-compatible endpoint without VM Import (or a
    test) puts another implementation there. Both calls go through boto3's EC2 client with the account's
    credentials, endpoint, timeouts and bounded retries, and raise the driver's typed errors.
    """

    def start_import_snapshot(
        self,
        driver: EC2Driver,
        *,
        bucket: str,
        key: str,
        disk_format: str,
        description: str,
        client_token: str,
        tags: dict[str, str],
    ) -> str:
        """Start importing s3://bucket/key as an EBS snapshot; returns the import task id (import-snap-...).

        Safe to call again for the same push: a task carrying the push's skyport tags is answered instead of starting
        a second one, and AWS itself answers a repeated ClientToken with the task it started the first time."""
        ec2 = driver.aws_client("ec2")
        with driver.aws_errors("starting the snapshot import"):
            existing = self._find_task(ec2, tags)
            if existing:
                return existing
            response = ec2.import_snapshot(
                ClientToken=client_token,
                Description=description[:255],
                DiskContainer={
                    "Description": description[:255],
                    "Format": disk_format.upper(),
                    "UserBucket": {"S3Bucket": bucket, "S3Key": key},
                },
                RoleName=driver.image_role,
                TagSpecifications=[
                    {
                        "ResourceType": "import-snapshot-task",
                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                    }
                ],
            )
        task_id = str(response.get("ImportTaskId") or "")
        if not task_id:
            raise TransientError("EC2 accepted the snapshot import but returned no task id; Skyport will retry.")
        return task_id

    def describe_import_snapshot(self, driver: EC2Driver, task_id: str) -> ImportStatus:
        ec2 = driver.aws_client("ec2")
        with driver.aws_errors("checking the snapshot import"):
            tasks = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id]).get("ImportSnapshotTasks") or []
        if not tasks:
            raise NotFoundError(
                f"EC2 has no snapshot import task {task_id} (EC2 forgets finished tasks after 7 days).",
                provider_code="InvalidConversionTaskId",
            )
        return _import_status(tasks[0].get("SnapshotTaskDetail") or {})

    def _find_task(self, ec2: Any, tags: dict[str, str]) -> str | None:
        """A live import task carrying this push's skyport tags (an earlier attempt started it, then died)."""
        ours = {k: v for k, v in tags.items() if k in (TAG_INSTALLATION, TAG_OPERATION)}
        if len(ours) < 2:
            return None
        kwargs: dict[str, Any] = {"MaxResults": 100}
        while True:
            page = ec2.describe_import_snapshot_tasks(**kwargs)
            for task in page.get("ImportSnapshotTasks") or []:
                task_tags = {t.get("Key"): t.get("Value") for t in task.get("Tags") or []}
                status = str((task.get("SnapshotTaskDetail") or {}).get("Status") or "").lower()
                if all(task_tags.get(k) == v for k, v in ours.items()) and status not in ("deleting", "deleted"):
                    return str(task["ImportTaskId"])
            token = page.get("NextToken")
            if not token:
                return None
            kwargs["NextToken"] = token


def _import_status(detail: dict[str, Any]) -> ImportStatus:
    progress = detail.get("Progress")
    return ImportStatus(
        state=str(detail.get("Status") or "active").lower(),
        progress=_int(progress) if progress not in (None, "") else None,
        snapshot_id=str(detail.get("SnapshotId") or "") or None,
        message=str(detail.get("StatusMessage") or ""),
    )


class EC2Driver(LibcloudDriver):
    """Amazon EC2 (and EC2-compatible endpoints given as `endpoint`, e.g. http://127.0.0.1:5000).

    Idempotency: RunInstances carries the Operation's idempotency token as ClientToken (AWS answers a retry with the
    first launch) and the skyport tags in its TagSpecification, so a resumed operation also finds what an earlier
    attempt created by a tag lookup (list_servers(tags=...)). EC2-compatible servers that ignore ClientToken are
    covered by the tag lookup alone.

    Metrics: libcloud has no CloudWatch client, so `has_metrics` is False and cpu_metrics() returns [].
    """

    kind = "ec2"
    label = "Amazon EC2"
    secret_field: ClassVar[str] = "secret_key"
    resize_steps: ClassVar[tuple[str, ...]] = ("stop", "resize", "start")
    has_metrics: ClassVar[bool] = False
    provider_label = "EC2"
    # tests swap in a subclass whose connection adapts to an EC2-compatible test server
    node_driver_class: ClassVar[Any] = SkyportEC2NodeDriver
    # AWS VM Import formats, best first (a streamOptimized VMDK is the smallest to upload)
    image_formats: ClassVar[tuple[str, ...]] = ("vmdk", "raw", "vhd")
    image_steps: ClassVar[tuple[str, ...]] = ("s3_upload", "import_snapshot", "wait_snapshot", "register_image")
    image_importer: ClassVar[ImageImporter] = ImageImporter()

    @property
    def auth_subject(self) -> str:
        return "EC2"

    def _build_node_driver(self) -> Any:
        key = self.credentials.get("access_key") or self.credentials.get("access_key_id") or ""
        secret = self.credentials.get("secret_key") or self.credentials.get("secret_access_key") or ""
        if not key or not secret:
            raise AuthError("EC2 needs an access key id and a secret access key.")
        region = self.region or "us-east-1"
        kwargs: dict[str, Any] = {"region": region, "signature_version": "4"}
        if self.credentials.get("session_token"):
            kwargs["token"] = self.credentials["session_token"]
        if self.endpoint:
            kwargs.update(_endpoint_kwargs(self.endpoint))
        if region not in self.node_driver_class.list_regions():
            raise InvalidRequestError(f"{region!r} is not an EC2 region libcloud knows.")
        return self.node_driver_class(key, secret, **kwargs)

    def _ec2(self, params: dict[str, Any]) -> Any:
        nd = self.node_driver
        return nd.connection.request(nd.path, params=params).object

    # --- account

    def validate_credentials(self) -> None:
        # DescribeRegions is cheap, needs only ec2:DescribeRegions and fails on a wrong key or secret
        self.list_regions()

    def list_regions(self) -> list[Region]:
        with self._errors("listing regions"):
            regions = self._ec2({"Action": "DescribeRegions"})
            names = [
                findtext(element=e, xpath="regionName", namespace=NAMESPACE) for e in _items(regions, "regionInfo")
            ]
            zones = tuple(z.name for z in self.node_driver.ex_list_availability_zones())
        region = self.region or "us-east-1"
        return [Region(id=n, name=n, zones=zones if n == region else ()) for n in sorted(filter(None, names))]

    # --- catalogue

    def list_sizes(self) -> list[Size]:
        sizes = list(_ec2_sizes(self.region or "us-east-1"))
        families = self.options.get("size_families")
        if families:
            sizes = [s for s in sizes if s.id.split(".", 1)[0] in families]
        return sizes

    def list_images(self, *, owners: tuple[str, ...] = (), name_patterns: tuple[str, ...] = ()) -> list[Image]:
        """Never unfiltered (EC2 offers thousands of public images): by owner ("self" when nothing is given) and/or
        name patterns (EC2 wildcards: * and ?)."""
        params: dict[str, Any] = {"Action": "DescribeImages"}
        if not owners and not name_patterns:
            owners = ("self",)
        for index, owner in enumerate(owners, start=1):
            params[f"Owner.{index}"] = owner
        if name_patterns:
            params["Filter.1.Name"] = "name"
            for index, pattern in enumerate(name_patterns, start=1):
                params[f"Filter.1.Value.{index}"] = pattern
        with self._errors("listing images"):
            images = self.node_driver._to_images(self._ec2(params))
        return sorted((self._ec2_image(i) for i in images), key=lambda i: (i.name, i.id))

    def _ec2_image(self, image: Any) -> Image:
        extra = image.extra or {}
        mappings = extra.get("block_device_mapping") or []
        root = extra.get("root_device_name")
        min_disk = 0
        for mapping in mappings:
            if not root or mapping.get("device_name") == root:
                min_disk = _int((mapping.get("ebs") or {}).get("volume_size"))
                break
        arch = str(extra.get("architecture") or "x86_64")
        return Image(
            id=str(image.id),
            name=str(image.name or image.id),
            os=str(extra.get("platform") or "linux"),
            arch="arm64" if arch in ("arm64", "aarch64") else arch,
            owner=str(extra.get("owner_alias") or extra.get("owner_id") or ""),
            is_public=str(extra.get("is_public")).lower() == "true",
            status=str(extra.get("state") or "available"),
            min_disk_gb=min_disk,
            disk_format="ami",
            created_at=_parse_time(extra.get("creation_date")),
        )

    def list_networks(self) -> list[Network]:
        with self._errors("listing subnets"):
            subnets = self.node_driver.ex_list_subnets()
        networks = []
        for subnet in subnets:
            extra = subnet.extra or {}
            label = subnet.name if subnet.name != subnet.id else f"{subnet.id} ({extra.get('zone') or ''})"
            networks.append(Network(id=str(subnet.id), name=label, cidr=str(extra.get("cidr_block") or "")))
        return sorted(networks, key=lambda n: n.id)

    # --- servers

    def _state(self, node: Any) -> ServerState:
        return EC2_STATES.get(str((node.extra or {}).get("status")), ServerState.UNKNOWN)

    def _to_server(self, node: Any) -> Server:
        server = super()._to_server(node)
        reason = str((node.extra or {}).get("reason") or "")
        return dataclasses.replace(server, fault=reason if server.state == ServerState.ERROR else "")

    def _node(self, server_id: str) -> Any:
        if not server_id.startswith("i-"):
            raise NotFoundError(f"EC2 has no instance {server_id!r} (instance ids start with i-).")
        with self._errors("looking up the instance"):
            nodes = self.node_driver.list_nodes(ex_node_ids=[server_id])
        if not nodes:
            raise NotFoundError(f"EC2 has no instance {server_id}.", provider_code="InvalidInstanceID.NotFound")
        return nodes[0]

    def _key_name(self, public_key: str, wanted: str | None = None) -> str:
        """The EC2 key pair holding this public key: imported under `wanted` (a retry finds it by that name), else an
        existing one with the same fingerprint, else imported under a name derived from the fingerprint."""
        nd = self.node_driver
        try:
            fingerprint = get_pubkey_ssh2_fingerprint(public_key)
        except Exception:
            raise InvalidRequestError("The SSH public key is not a valid OpenSSH public key.") from None
        if wanted is None:
            for pair in nd.list_key_pairs():
                if pair.fingerprint == fingerprint:
                    return str(pair.name)
        name = wanted or "skyport-" + fingerprint.replace(":", "")
        try:
            nd.import_key_pair_from_string(name, public_key)
        except BaseHTTPError as exc:
            if "InvalidKeyPair.Duplicate" not in str(exc.message):
                raise
        return name

    def create_server(self, request: CreateServer) -> Server:
        nd = self.node_driver
        kwargs: dict[str, Any] = {
            "name": request.name,
            "size": SimpleNamespace(id=request.size_id),
            "image": SimpleNamespace(id=request.image_id),
            "ex_metadata": dict(request.tags),
        }
        if request.idempotency_token:
            kwargs["ex_clienttoken"] = client_token(request.idempotency_token)
        if request.user_data:
            kwargs["ex_userdata"] = request.user_data
        if request.network_id:
            kwargs["ex_subnet"] = EC2NetworkSubnet(request.network_id, request.network_id, "available")
            kwargs["ex_assign_public_ip"] = request.want_public_ip
        with self._errors("launching the instance"):
            if request.public_key:
                kwargs["ex_keyname"] = self._key_name(request.public_key, request.key_name)
            if request.firewall_id:
                if request.network_id:
                    kwargs["ex_security_group_ids"] = [request.firewall_id]
                elif request.firewall_name:  # the default VPC's default subnet: groups go by name
                    kwargs["ex_security_groups"] = [request.firewall_name]
                else:  # only the id is known: look its name up
                    group = nd.ex_get_security_groups(group_ids=[request.firewall_id])
                    kwargs["ex_security_groups"] = [group[0].name] if group else []
            node = nd.create_node(**kwargs)
        return self._to_server(node)

    def _security_group_id(self, name: str) -> str | None:
        groups = self.node_driver.ex_get_security_groups(filters={"group-name": name})
        return str(groups[0].id) if groups else None

    def _create_security_group(self, name: str, tags: dict[str, str]) -> str:
        """CreateSecurityGroup with its tags in the same call (TagSpecification): no CreateTags after it."""
        params: dict[str, Any] = {"Action": "CreateSecurityGroup", "GroupName": name,
                                  "GroupDescription": "Opened by Skyport for a deployment"}
        if tags:
            params["TagSpecification.1.ResourceType"] = "security-group"
            for index, (key, value) in enumerate(tags.items(), start=1):
                params[f"TagSpecification.1.Tag.{index}.Key"] = key
                params[f"TagSpecification.1.Tag.{index}.Value"] = value
        return str(findtext(element=self._ec2(params), xpath="groupId", namespace=NAMESPACE))

    def ensure_firewall(self, name: str, rules: list[dict[str, Any]], *, tags: dict[str, str]) -> str:
        """A security group in the region's default VPC: created with its tags in one call, or, when the name is
        taken (a retry, or another server of the same role), the existing one found by name. Its rules are added
        one by one (a rule that is already there is fine)."""
        nd = self.node_driver
        with self._errors("creating the security group"):
            try:
                group_id = self._create_security_group(name, dict(tags))
            except BaseHTTPError as exc:
                if "InvalidGroup.Duplicate" not in str(exc.message):
                    raise
                found = self._security_group_id(name)
                if found is None:
                    raise
                group_id = found
            for rule in rules:
                try:
                    nd.ex_authorize_security_group_ingress(
                        group_id, int(rule["port"]), int(rule["port"]), cidr_ips=[rule.get("cidr", "0.0.0.0/0")],
                        protocol=rule.get("protocol", "tcp"),
                    )
                except BaseHTTPError as exc:
                    if "InvalidPermission.Duplicate" not in str(exc.message):
                        raise
        return group_id

    def delete_firewall(self, name: str) -> None:
        with self._errors("deleting the security group"):
            group_id = self._security_group_id(name)
            if group_id is None:
                return
            try:
                self.node_driver.ex_delete_security_group_by_id(group_id)
            except BaseHTTPError as exc:
                if "DependencyViolation" in str(exc.message):  # its instances are still terminating
                    raise TransientError(f"Security group {name} is still in use: retry once its instances are "
                                         "gone.", provider_code="DependencyViolation") from None
                if "InvalidGroup.NotFound" not in str(exc.message):
                    raise

    def delete_key_pair(self, name: str) -> None:
        with self._errors("deleting the key pair"):
            try:
                self.node_driver.delete_key_pair(SimpleNamespace(name=name))
            except BaseHTTPError as exc:
                if "InvalidKeyPair.NotFound" not in str(exc.message):
                    raise

    def get_server(self, server_id: str) -> Server:
        return self._to_server(self._node(server_id))

    def get_servers(self, server_ids: Sequence[str]) -> dict[str, Server]:
        """One DescribeInstances (and one DescribeAddresses) for all of them: filtered by `instance-id`, which,
        unlike `InstanceId.N`, leaves out an unknown id instead of failing the whole call."""
        wanted = [i for i in dict.fromkeys(server_ids) if i.startswith("i-")]
        if not wanted:
            return {}
        with self._errors("looking up instances"):
            nodes = self.node_driver.list_nodes(ex_filters={"instance-id": wanted})
        return {n.id: self._to_server(n) for n in nodes}

    def list_servers(self, *, tags: dict[str, str] | None = None) -> list[Server]:
        """Every live instance of the region (terminated ones are left out), all pages; `tags` are ANDed."""
        filters: dict[str, Any] = {"instance-state-name": list(LIVE_EC2_STATES)}
        for key, value in (tags or {}).items():
            filters[f"tag:{key}"] = value
        with self._errors("listing instances"):
            nodes = self.node_driver.list_nodes(ex_filters=filters)
        return [self._to_server(n) for n in nodes]

    def start_server(self, server_id: str) -> None:
        node = self._node(server_id)
        with self._errors("starting the instance"):
            self.node_driver.start_node(node)

    def stop_server(self, server_id: str) -> None:
        node = self._node(server_id)
        with self._errors("stopping the instance"):
            self.node_driver.stop_node(node)

    def reboot_server(self, server_id: str, *, hard: bool = False) -> None:
        # EC2 has one reboot; it falls back to a hard reset itself when the guest does not shut down in 4 minutes
        node = self._node(server_id)
        with self._errors("rebooting the instance"):
            self.node_driver.reboot_node(node)

    def resize_server(self, server_id: str, size_id: str) -> None:
        """ModifyInstanceAttribute InstanceType. AWS accepts it only on a stopped instance; the driver checks first
        (some EC2-compatible servers would accept it on a running one). Resizing to the current type is a no-op, so a
        resumed resize step is safe."""
        node = self._node(server_id)
        state = self._state(node)
        if node.extra.get("instance_type") == size_id:
            return
        if state != ServerState.STOPPED:
            raise InvalidRequestError(
                f"EC2 can only change the type of a stopped instance; {server_id} is {state.value}. Stop it first.",
                provider_code="IncorrectInstanceState",
            )
        with self._errors("changing the instance type"):
            self.node_driver.ex_modify_instance_attribute(node, {"InstanceType.Value": size_id})

    def delete_server(self, server_id: str) -> None:
        node = self._node(server_id)
        with self._errors("terminating the instance"):
            self.node_driver.destroy_node(node)

    def console(self, server_id: str) -> Console:
        node = self._node(server_id)
        with self._errors("reading the console output"):
            result = self.node_driver.ex_get_console_output(node)
        return Console(kind="log", output=str(result.get("output") or ""))

    # --- public addresses (Elastic IPs in the VPC domain)

    def _address(self, ip_id: str) -> Any:
        with self._errors("looking up the Elastic IP"):
            res = self._ec2({"Action": "DescribeAddresses", "AllocationId.1": ip_id})
            addresses = self.node_driver._to_addresses(res, only_associated=False)
        if not addresses:
            raise NotFoundError(f"EC2 has no Elastic IP {ip_id}.", provider_code="InvalidAllocationID.NotFound")
        return addresses[0]

    def allocate_public_ip(self, *, tags: dict[str, str] | None = None) -> PublicIP:
        params: dict[str, Any] = {"Action": "AllocateAddress", "Domain": "vpc"}
        if tags:
            params["TagSpecification.1.ResourceType"] = "elastic-ip"
            for index, (key, value) in enumerate(tags.items(), start=1):
                params[f"TagSpecification.1.Tag.{index}.Key"] = key
                params[f"TagSpecification.1.Tag.{index}.Value"] = value
        with self._errors("allocating an Elastic IP"):
            address = self.node_driver._to_address(self._ec2(params), only_associated=False)
        return PublicIP(id=str(address.extra.get("allocation_id")), address=str(address.ip))

    def list_public_ips(self, *, tags: dict[str, str] | None = None) -> list[PublicIP]:
        """DescribeAddresses has no pages (it answers every address of the region at once); `tags` become
        `tag:<key>` filters, ANDed by EC2."""
        params: dict[str, Any] = {"Action": "DescribeAddresses"}
        if tags:
            params.update(self.node_driver._build_filters({f"tag:{k}": v for k, v in tags.items()}))
        with self._errors("listing Elastic IPs"):
            addresses = self.node_driver._to_addresses(self._ec2(params), only_associated=False)
        return [
            PublicIP(id=str(a.extra.get("allocation_id")), address=str(a.ip), server_id=a.instance_id or None)
            for a in addresses
            if a.extra.get("allocation_id")  # EC2-Classic addresses have none and cannot be ours
        ]

    def attach_public_ip(self, ip_id: str, server_id: str) -> None:
        with self._errors("attaching the Elastic IP"):
            self._ec2({"Action": "AssociateAddress", "InstanceId": server_id, "AllocationId": ip_id})

    def public_ip(self, ip_id: str) -> PublicIP:
        address = self._address(ip_id)
        return PublicIP(id=ip_id, address=str(address.ip), server_id=address.instance_id or None)

    def release_public_ip(self, ip_id: str) -> None:
        """Detaches the address first when it is attached (EC2 refuses to release an associated address)."""
        address = self._address(ip_id)
        with self._errors("releasing the Elastic IP"):
            association = address.extra.get("association_id")
            if association:
                self._ec2({"Action": "DisassociateAddress", "AssociationId": association})
            self._ec2({"Action": "ReleaseAddress", "AllocationId": ip_id})

    # --- images: VM Import (upload to S3, ImportSnapshot, wait, RegisterImage)
    #
    # Account options: image_bucket (required: the S3 bucket VM Import reads from, in the account's region),
    # image_role (the VM Import service role, default "vmimport"), image_s3_endpoint (S3 of an EC2-compatible cloud
    # when it is not at `endpoint`), image_delete_uploads (delete the S3 object once the AMI is registered; by
    # default it is kept, and a lifecycle rule on the bucket's skyport/ prefix can expire it).

    def upload_image(self, upload: ImageUpload) -> Image:
        raise InvalidRequestError(
            "EC2 imports an image in steps (upload to S3, snapshot import, register the AMI) that take minutes: "
            "push it with an image push operation."
        )

    def image_step(self, step: str, upload: ImageUpload, state: dict[str, Any]) -> dict[str, Any]:
        steps = {
            "s3_upload": self._image_s3_upload,
            "import_snapshot": self._image_import_snapshot,
            "wait_snapshot": self._image_wait_snapshot,
            "register_image": self._image_register,
        }
        if step not in steps:
            raise ValueError(f"unknown EC2 image step {step!r}")
        return steps[step](upload, state)

    def find_image(self, *, tags: dict[str, str]) -> Image | None:
        """The account's own AMI carrying all these tags (the oldest, when an earlier push made several)."""
        images = self._own_images(tags=tags)
        return self._ec2_image(images[0]) if images else None

    def delete_image(self, image_id: str) -> None:
        """Deregister the AMI, then delete the snapshots it was registered from (they were made for it)."""
        with self._errors(f"describe image {image_id}"):
            res = self._ec2({"Action": "DescribeImages", "ImageId.1": image_id})
        found = _items(res, "imagesSet")
        if not found:
            raise NotFoundError(f"EC2 has no image {image_id}.")
        snapshots = [
            str(findtext(element=m, xpath="ebs/snapshotId", namespace=NAMESPACE) or "")
            for m in _items(found[0], "blockDeviceMapping")
        ]
        with self._errors(f"deregister image {image_id}"):
            self._ec2({"Action": "DeregisterImage", "ImageId": image_id})
        for snapshot_id in filter(None, snapshots):
            # already gone is what we wanted; the typed error comes out of _errors, so suppress outside it
            with contextlib.suppress(NotFoundError), self._errors(f"delete snapshot {snapshot_id}"):
                self._ec2({"Action": "DeleteSnapshot", "SnapshotId": snapshot_id})

    @property
    def image_bucket(self) -> str:
        bucket = str(self.options.get("image_bucket") or "").strip()
        if not bucket:
            raise InvalidRequestError(
                "Set option image_bucket on the EC2 account to the S3 bucket VM Import reads from."
            )
        return bucket

    @property
    def image_role(self) -> str:
        return str(self.options.get("image_role") or "vmimport")

    def _image_key(self, upload: ImageUpload) -> str:
        installation = upload.tags.get(TAG_INSTALLATION) or "default"
        operation = upload.tags.get(TAG_OPERATION) or hashlib.sha256(upload.path.encode()).hexdigest()[:16]
        return f"skyport/{installation}/{operation}/{os.path.basename(upload.path)}"

    def _image_s3_upload(self, upload: ImageUpload, state: dict[str, Any]) -> dict[str, Any]:
        """Put the disk at skyport/<installation>/<operation>/<file>: a retry writes the same key, and skips the
        upload when the object is already there with the file's size (S3 shows an object only once complete)."""
        bucket = self.image_bucket
        if upload.disk_format not in self.image_formats:
            raise InvalidRequestError(f"EC2 imports {', '.join(self.image_formats)} disks, not {upload.disk_format!r}.")
        _ec2_arch(upload.arch)
        if not os.path.isfile(upload.path):
            raise InvalidRequestError(
                f"The disk file {os.path.basename(upload.path)!r} of this push is gone; push the image again."
            )
        size = os.path.getsize(upload.path)
        key = self._image_key(upload)
        s3 = self.aws_client("s3")
        try:
            self._s3_put(s3, upload, bucket, key, size)
        except CloudError as exc:
            if exc.provider_code != "NoSuchBucket":
                raise
            raise InvalidRequestError(
                f"The S3 bucket {bucket!r} (option image_bucket of the EC2 account) does not exist: create it in "
                f"{self.region or 'us-east-1'} with the VM Import role allowed to read it, or correct the option.",
                provider_code="NoSuchBucket",
            ) from None
        return {"s3_bucket": bucket, "s3_key": key, "s3_bytes": size}

    def _s3_put(self, s3: Any, upload: ImageUpload, bucket: str, key: str, size: int) -> None:
        with self.aws_errors(f"uploading the disk to S3 bucket {bucket!r}"):
            if self._s3_size(s3, bucket, key) != size:
                from boto3.s3.transfer import TransferConfig

                s3.upload_file(
                    upload.path,
                    bucket,
                    key,
                    Config=TransferConfig(
                        multipart_threshold=S3_PART_BYTES, multipart_chunksize=S3_PART_BYTES, max_concurrency=4
                    ),
                    ExtraArgs={"Metadata": {k.replace(":", "-"): v for k, v in upload.tags.items()}},
                )

    @staticmethod
    def _s3_size(s3: Any, bucket: str, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if str((exc.response.get("Error") or {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _image_import_snapshot(self, upload: ImageUpload, state: dict[str, Any]) -> dict[str, Any]:
        if state.get("import_task_id"):
            return {}
        installation = upload.tags.get(TAG_INSTALLATION, "")
        operation = upload.tags.get(TAG_OPERATION, "")
        task_id = self.image_importer.start_import_snapshot(
            self,
            bucket=str(state["s3_bucket"]),
            key=str(state["s3_key"]),
            disk_format=upload.disk_format,
            description=(upload.description or f"{upload.name} (Skyport push {operation})")[:255],
            client_token=client_token(f"skyport-{installation}-{operation}-import-snapshot"),
            tags=dict(upload.tags),
        )
        return {"import_task_id": task_id}

    def _image_wait_snapshot(self, upload: ImageUpload, state: dict[str, Any]) -> dict[str, Any]:
        task_id = str(state["import_task_id"])
        status = self.image_importer.describe_import_snapshot(self, task_id)
        message = scrub_secrets(status.message, self.credentials)[:300]
        if status.state == "completed":
            if not status.snapshot_id:
                raise InvalidRequestError(f"EC2 finished the snapshot import {task_id} without a snapshot.")
            return {"snapshot_id": status.snapshot_id}
        if status.state in ("deleting", "deleted", "error", "failed", "cancelled"):
            reason = message or "no reason given"
            raise InvalidRequestError(f"EC2 could not import the disk (task {task_id}, {status.state}): {reason}")
        progress = None if status.progress is None else max(0, min(100, status.progress))
        stage = f": {message}" if message else ""
        raise ImagePending(f"EC2 snapshot import{stage}", progress=progress, delay=IMPORT_POLL_SECONDS)

    def _image_register(self, upload: ImageUpload, state: dict[str, Any]) -> dict[str, Any]:
        """RegisterImage from the snapshot, unless an earlier attempt did: the AMI is looked up by the push's tags,
        then by its deterministic name (a crash between RegisterImage and CreateTags leaves it untagged)."""
        ours = {k: v for k, v in upload.tags.items() if k in (TAG_INSTALLATION, TAG_OPERATION)}
        name = ami_name(upload.name, ours.get(TAG_OPERATION, ""))
        snapshot_id = str(state["snapshot_id"])
        found = self._own_images(tags=ours) if len(ours) == 2 else []
        if not found:
            found = self._own_images(name=name)
            theirs = found[0].extra.get("tags", {}).get(TAG_INSTALLATION) if found else None
            if theirs and theirs != ours.get(TAG_INSTALLATION):
                raise InvalidRequestError(
                    f"This EC2 account already has an AMI named {name!r} from another Skyport installation."
                )
        if found:
            image_id = str(found[0].id)
        else:
            arch = _ec2_arch(upload.arch)
            params: dict[str, Any] = {
                "Action": "RegisterImage",
                "Name": name,
                "Description": (upload.description or upload.name)[:255],
                "Architecture": arch,
                "RootDeviceName": "/dev/xvda",
                "VirtualizationType": "hvm",
                "EnaSupport": "true",
                "BlockDeviceMapping.1.DeviceName": "/dev/xvda",
                "BlockDeviceMapping.1.Ebs.SnapshotId": snapshot_id,
                "BlockDeviceMapping.1.Ebs.VolumeType": "gp3",
                "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "true",
            }
            if upload.min_disk_gb and upload.min_disk_gb > self._snapshot_gb(snapshot_id):
                # a bigger root volume than the disk; a smaller one would make RegisterImage fail
                params["BlockDeviceMapping.1.Ebs.VolumeSize"] = str(upload.min_disk_gb)
            with self._errors("registering the AMI"):
                image_id = str(findtext(element=self._ec2(params), xpath="imageId", namespace=NAMESPACE) or "")
            if not image_id:
                raise TransientError("EC2 registered the AMI but returned no image id; Skyport will retry.")
        with self._errors("tagging the AMI"):
            self.node_driver.ex_create_tags(SimpleNamespace(id=image_id), {**upload.tags, "Name": upload.name})
            self.node_driver.ex_create_tags(SimpleNamespace(id=snapshot_id), {**upload.tags, "Name": upload.name})
        if self.options.get("image_delete_uploads") and state.get("s3_key"):
            self._delete_upload(str(state["s3_bucket"]), str(state["s3_key"]))
        return {"image_id": image_id, "image_name": name}

    def _snapshot_gb(self, snapshot_id: str) -> int:
        with self._errors("looking up the imported snapshot"):
            res = self._ec2({"Action": "DescribeSnapshots", "SnapshotId.1": snapshot_id})
        return max(
            (_int(findtext(element=e, xpath="volumeSize", namespace=NAMESPACE)) for e in _items(res, "snapshotSet")),
            default=0,
        )

    def _delete_upload(self, bucket: str, key: str) -> None:
        """Best effort: the AMI is registered, the object is only a leftover now."""
        try:
            with self.aws_errors("deleting the uploaded disk"):
                self.aws_client("s3").delete_object(Bucket=bucket, Key=key)
        except CloudError as exc:
            log.warning("could not delete s3://%s/%s after the import: %s", bucket, key, exc.message)

    def _own_images(self, *, tags: Mapping[str, str] | None = None, name: str | None = None) -> list[Any]:
        """The account's own AMIs (DescribeImages Owner=self) with all these tags and/or this name, oldest first."""
        filters: dict[str, Any] = {f"tag:{k}": v for k, v in (tags or {}).items()}
        if name:
            filters["name"] = name
        params: dict[str, Any] = {"Action": "DescribeImages", "Owner.1": "self"}
        params.update(self.node_driver._build_filters(filters))
        with self._errors("looking up images"):
            images = self.node_driver._to_images(self._ec2(params))
        live = [i for i in images if str((i.extra or {}).get("state") or "available") not in ("deregistered", "failed")]
        return sorted(live, key=lambda i: (str((i.extra or {}).get("creation_date") or ""), str(i.id)))

    # --- boto3 (S3, and VM Import, which libcloud does not wrap)

    def aws_client(self, service: str) -> Any:
        """A boto3 client for `service` with the account's keys, region and endpoint, the driver's timeouts and a
        bounded number of retries. Built once per driver and service."""
        clients: dict[str, Any] = self.__dict__.setdefault("_aws_clients", {})
        if service in clients:
            return clients[service]
        import boto3
        from botocore.config import Config

        key = self.credentials.get("access_key") or self.credentials.get("access_key_id") or ""
        secret = self.credentials.get("secret_key") or self.credentials.get("secret_access_key") or ""
        if not key or not secret:
            raise AuthError("EC2 needs an access key id and a secret access key.")
        endpoint = self.endpoint or None
        if service == "s3" and self.options.get("image_s3_endpoint"):
            endpoint = str(self.options["image_s3_endpoint"])
            # an option, not the checked `endpoint`: the outbound rules apply here, before anything is signed
            from apps.core.netsafety import UnsafeURLError, check_url

            try:
                check_url(endpoint)
            except UnsafeURLError as exc:
                raise InvalidRequestError(f"Option image_s3_endpoint is refused: {exc}") from None
        if endpoint:
            _endpoint_kwargs(endpoint)  # refuses anything but an http(s) URL
        config = Config(
            connect_timeout=10,
            read_timeout=CALL_TIMEOUT_SECONDS,
            retries={"max_attempts": 3, "mode": "standard"},
            # an endpoint given as a host:port URL has no bucket subdomains
            s3={"addressing_style": "path"} if endpoint else None,
        )
        with self.aws_errors("connecting"):
            session = boto3.session.Session(
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                aws_session_token=self.credentials.get("session_token") or None,
                region_name=self.region or "us-east-1",
            )
            clients[service] = session.client(service, endpoint_url=endpoint, config=config)
        return clients[service]

    @contextmanager
    def aws_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CloudError:
            raise
        except Exception as exc:  # a boto3 failure leaves the driver as a typed error, without the SDK's objects
            raise self._map_aws_error(exc, doing) from None

    def _map_aws_error(self, exc: BaseException, doing: str) -> CloudError:
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions as bx
        from botocore.parsers import ResponseParserError

        who = self.provider_label
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error") or {}
            code, message = str(error.get("Code") or ""), str(error.get("Message") or "")
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code.isdigit():  # S3 answers HEAD requests with a status and no body
                status, code = status or int(code), ""
            return self._typed_error(code, _scrub(message, self._secrets), status, doing)
        if isinstance(exc, S3UploadFailedError):
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, bx.ClientError):
                return self._map_aws_error(cause, doing)
            match = _BOTO_ERROR_TEXT.search(str(exc))
            if match:
                return self._typed_error(match.group(1), _scrub(match.group(2).strip(), self._secrets), None, doing)
            return CloudError(f"{who} failed while {doing}: the upload did not complete.")
        if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
            return TransientError(f"{who} did not answer in time while {doing}; Skyport will retry.")
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError | ConnectionError | TimeoutError):
            return TransientError(f"{who} could not be reached while {doing}: check the endpoint and the network.")
        if isinstance(exc, ResponseParserError):
            return TransientError(f"{who} sent an unreadable response while {doing} (a provider-side error).")
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return AuthError(f"{who} needs an access key id and a secret access key.")
        if isinstance(exc, bx.ParamValidationError):
            return InvalidRequestError(f"{who} refused the request while {doing}: {_scrub(str(exc), self._secrets)}")
        if isinstance(exc, OSError):
            return InvalidRequestError(f"Skyport could not read the disk file while {doing} ({type(exc).__name__}).")
        return CloudError(f"{who} failed while {doing}: {type(exc).__name__}")

    # --- metrics

    def cpu_metrics(self, server_id: str, *, since: datetime.datetime) -> list[CpuSample]:
        return []


def _items(element: Any, set_name: str) -> list[Any]:
    return list(findall(element=element, xpath=f"{set_name}/item", namespace=NAMESPACE))


__all__ = ["EC2Driver", "ImageImporter", "ImportStatus", "LibcloudDriver", "SkyportEC2NodeDriver"]

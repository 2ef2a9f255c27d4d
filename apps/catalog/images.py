"""Image services: import (upload, URL, provider image), push to cloud accounts, approval, sharing.

The pipeline:
- An upload is streamed to local scratch space with a size limit and a SHA-256, checked with qemu-img
  (apps/catalog/qemu.py) and only then kept in the image store (apps/catalog/store.py) with its row: a refused file
  leaves nothing behind. A URL import commits a row in state `importing`; a task downloads (every redirect checked
  by the outbound rules), checks and stores the file, then marks the image ready or failed.
- A push creates one ImageCopy per account-region; a task per copy converts the master file to the first format the
  provider takes (converted files are kept in the store, so two clouds wanting raw convert once), then starts a
  `push_image` Operation (apps/clouds/operations.py) whose steps are the driver's `image_steps`. The operation
  follower `image_copy_follow` brings the copy's state, progress and provider id up to date after each run.
  With the file store the driver reads the stored file where it is; with the S3 store the worker downloads it to
  local scratch space first (removed when the copy finishes; a step resumed on another worker downloads it again).
- Approval (security admins and admins) decides whether an image may be launched; sharing and object grants let
  other projects use or edit it.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import posixpath
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.models import Project, User
from apps.catalog import qemu
from apps.catalog import store as image_store
from apps.catalog.events import send_catalog_event
from apps.catalog.models import CatalogItem, Image, ImageCopy, ImageShare
from apps.catalog.permissions import require_change
from apps.clouds.drivers import driver_class
from apps.clouds.drivers.base import CloudError, InvalidRequestError
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Health, Operation
from apps.clouds.selectors import LAUNCH_POLICY, can_launch
from apps.core import audit
from apps.core.access import get_access
from apps.core.netsafety import UnsafeURLError, check_address, check_url, resolve
from apps.core.permissions import ServiceError, require

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("name", "version", "os", "os_version", "arch", "description", "min_disk_gb", "min_ram_mb")
AUDIT_FIELDS = (*IMAGE_FIELDS, "state", "disk_format", "size_bytes", "checksum_sha256", "approval")
PROGRESS_STEP = 2  # percent between two progress writes
MAX_REDIRECTS = 5


# --- small helpers -----------------------------------------------------------------------------------------------
def _images() -> Any:
    return Image.objects.all_tenants()


def _copies() -> Any:
    return ImageCopy.objects.all_tenants()


def _text(value: Any, limit: int, field: str, label: str) -> str:
    text = str(value or "").strip()
    if len(text) > limit:
        raise ServiceError({field: f"{label} takes at most {limit} characters."})
    return text


def _clean_fields(
    *, name: str, version: str = "", os: str = "", os_version: str = "", arch: str = "x86_64", description: str = ""
) -> dict[str, Any]:
    cleaned = {
        "name": _text(name, 100, "name", "The name"),
        "version": _text(version, 40, "version", "The version"),
        "os": _text(os, 60, "os", "The operating system"),
        "os_version": _text(os_version, 40, "os_version", "The OS version"),
        "arch": str(arch or "x86_64").strip(),
        "description": _text(description, 4000, "description", "The description"),
    }
    if not cleaned["name"]:
        raise ServiceError({"name": "Give the image a name."})
    if cleaned["arch"] not in {"x86_64", "arm64"}:
        raise ServiceError({"arch": "The architecture is x86_64 or arm64."})
    return cleaned


def _clean_sha(value: str) -> str:
    sha = (value or "").strip().lower()
    if sha.startswith("sha256:"):
        sha = sha[7:]
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ServiceError({"expected_sha256": "A SHA-256 checksum is 64 hexadecimal characters."})
    return sha


def _check_unique(organization_id: int, name: str, version: str, exclude_pk: int | None = None) -> None:
    clash = _images().filter(organization_id=organization_id, name=name, version=version)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        label = f"{name} {version}".strip()
        raise ServiceError({"name": f"The organisation already has an image {label}: change the name or version."})


def _require_project(actor: Any, project: Project) -> Project:
    require(actor, "images.manage", project)
    if project.is_archived:
        raise ServiceError({"project": f"{project.name} is archived: it cannot get new images."})
    return project


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _size_text(size: int) -> str:
    return qemu.human_size(size)


# --- import from an upload -----------------------------------------------------------------------------------------
def image_import_upload(
    *,
    actor: User,
    project: Project,
    name: str,
    fileobj: Any,
    filename: str,
    version: str = "",
    os: str = "",
    os_version: str = "",
    arch: str = "x86_64",
    description: str = "",
    expected_sha256: str = "",
) -> Image:
    """Stream, hash, check with qemu-img, then store: a refused file leaves no row and no file."""
    _require_project(actor, project)
    fields = _clean_fields(name=name, version=version, os=os, os_version=os_version, arch=arch,
                           description=description)
    expected = _clean_sha(expected_sha256)
    _check_unique(project.organization_id, fields["name"], fields["version"])
    limit = settings.SKYPORT_IMAGE_MAX_BYTES
    tmp = image_store.scratch_file(".upload")
    key = ""
    try:
        try:
            size, sha = image_store.copy_stream(fileobj, tmp, max_bytes=limit)
        except image_store.TooLarge:
            raise ServiceError({"file": f"The file is larger than the limit of {_size_text(limit)}."}) from None
        if expected and expected != sha:
            raise ServiceError(
                {"expected_sha256": f"The file's SHA-256 is {sha}, not the expected {expected}: the file was "
                 "refused (damaged or not the one you meant)."}
            )
        try:
            info = qemu.inspect(tmp)
        except (qemu.ImageRejected, qemu.ConversionError) as exc:
            raise ServiceError({"file": exc.message}) from None
        key = image_store.master_key(uuid.uuid4().hex, info.format)
        try:
            image_store.get_store().put_file(key, tmp, move=True)
        except image_store.StoreError as exc:
            raise ServiceError({"file": str(exc)}) from None
    finally:
        _remove(tmp)
    try:
        with transaction.atomic():
            _check_unique(project.organization_id, fields["name"], fields["version"])
            image = Image.objects.create(
                organization_id=project.organization_id, project=project, **fields,
                source=Image.Source.UPLOAD, source_filename=posixpath.basename(str(filename or "").replace("\\", "/"))
                [:255], store_key=key, disk_format=info.format, size_bytes=size,
                virtual_size_bytes=info.virtual_size, min_disk_gb=-(-info.virtual_size // 1024**3),
                checksum_sha256=sha, state=Image.State.READY, progress=100, created_by=actor,
            )
            audit.record(actor=actor, verb="image.import_upload", obj=image, after=audit.snapshot(image, AUDIT_FIELDS))
            send_catalog_event(image=image)
    except IntegrityError:
        image_store.get_store().delete(key)
        raise ServiceError({"name": "An image with this name and version was just created: change them."}) from None
    except BaseException:
        image_store.get_store().delete(key)
        raise
    return image


# --- import from a URL ---------------------------------------------------------------------------------------------
@transaction.atomic
def image_import_url(
    *,
    actor: User,
    project: Project,
    name: str,
    url: str,
    version: str = "",
    os: str = "",
    os_version: str = "",
    arch: str = "x86_64",
    description: str = "",
    expected_sha256: str = "",
) -> Image:
    """Check the URL against the outbound rules, commit the row (importing); a task downloads and checks it."""
    _require_project(actor, project)
    fields = _clean_fields(name=name, version=version, os=os, os_version=os_version, arch=arch,
                           description=description)
    expected = _clean_sha(expected_sha256)
    url = _text(url, 2000, "url", "The URL")
    if not url:
        raise ServiceError({"url": "Give the URL of the image file (https://…)."})
    try:
        check_url(url)
    except UnsafeURLError as exc:
        raise ServiceError({"url": str(exc)}) from None
    _check_unique(project.organization_id, fields["name"], fields["version"])
    try:
        with transaction.atomic():
            image = Image.objects.create(
                organization_id=project.organization_id, project=project, **fields, source=Image.Source.URL,
                source_url=url, source_filename=posixpath.basename(urlsplit(url).path)[:255],
                checksum_sha256=expected, state=Image.State.IMPORTING, progress=0, created_by=actor,
            )
    except IntegrityError:
        raise ServiceError({"name": "An image with this name and version was just created: change them."}) from None
    audit.record(actor=actor, verb="image.import_url", obj=image, after={**audit.snapshot(image, IMAGE_FIELDS),
                                                                         "source_url": url})
    send_catalog_event(image=image)
    from apps.catalog.tasks import image_import_url_task

    image_id = image.pk
    transaction.on_commit(lambda: image_import_url_task.delay(image_id))
    return image


class DownloadError(Exception):
    pass


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL the outbound rules allow (a public server must not bounce us inward)."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            check_url(newurl)
        except UnsafeURLError as exc:
            raise DownloadError(f"The server redirected to a refused address: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _checked_connection(address: tuple[str, int], timeout: Any, source_address: Any = None) -> socket.socket:
    """Connect to an address the host resolves to *now*, each checked by the outbound rules: the name cannot
    resolve to a public address for the check and to an inward one for the connection (DNS rebinding)."""
    host, port = address
    try:
        addresses = resolve(host, port)
        for candidate in addresses:
            check_address(candidate)
    except UnsafeURLError as exc:
        raise DownloadError(str(exc)) from None
    last: OSError | None = None
    for candidate in addresses:
        try:
            return socket.create_connection((candidate, port), timeout, source_address)
        except OSError as exc:
            last = exc
    raise last or OSError(f"{host} has no address")


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _checked_connection


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: Any) -> Any:
        return self.do_open(_CheckedHTTPConnection, req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: Any) -> Any:
        return self.do_open(_CheckedHTTPSConnection, req, context=getattr(self, "_context", None))


def _opener() -> urllib.request.OpenerDirector:
    handlers: list[Any] = [urllib.request.ProxyHandler({}), _CheckedRedirects(), _CheckedHTTPHandler(),
                           _CheckedHTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
                           urllib.request.HTTPErrorProcessor()]
    opener = urllib.request.OpenerDirector()
    for handler in handlers:
        opener.add_handler(handler)
    return opener


class _Deadline:
    """A response read under an overall deadline: a server trickling data cannot hold a worker for ever (the socket
    timeout only bounds each wait for data)."""

    def __init__(self, response: Any, seconds: float) -> None:
        self.response = response
        self.seconds = seconds
        self.ends = time.monotonic() + seconds

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self.ends:
            raise DownloadError(f"The download took longer than {int(self.seconds)} seconds: it was stopped.")
        return bytes(self.response.read(size))


def download(url: str, path: str, *, max_bytes: int, progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    """Stream `url` to `path`: (size, sha256). DownloadError with a readable message; nothing left on failure."""
    try:
        check_url(url)  # again: the name may resolve elsewhere now
    except UnsafeURLError as exc:
        raise DownloadError(str(exc)) from None
    # the scheme is http(s), checked just above
    request = urllib.request.Request(url, headers={"User-Agent": "Skyport image import", "Accept": "*/*"})  # noqa: S310
    try:
        with _opener().open(request, timeout=settings.SKYPORT_IMAGE_DOWNLOAD_TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0)
            if total > max_bytes:
                raise DownloadError(f"The file is larger than the limit of {_size_text(max_bytes)}.")

            def seen(size: int) -> None:
                if progress is not None and total:
                    progress(min(99, size * 100 // total))

            timed = _Deadline(response, settings.SKYPORT_IMAGE_DOWNLOAD_MAX_SECONDS)
            return image_store.copy_stream(timed, path, max_bytes=max_bytes, progress=seen)
    except DownloadError:
        raise
    except image_store.TooLarge:
        raise DownloadError(f"The file is larger than the limit of {_size_text(max_bytes)}.") from None
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"The server answered {exc.code} {exc.reason}.") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, DownloadError):
            raise reason from None
        raise DownloadError(f"Could not download the file: {reason}.") from None
    except TimeoutError:
        raise DownloadError("The download stalled (no data for too long).") from None
    except (OSError, ValueError) as exc:
        raise DownloadError(f"Could not download the file ({type(exc).__name__}).") from None


def _image_progress(image_id: int) -> Callable[[int], None]:
    last = [-PROGRESS_STEP]

    def update(percent: int) -> None:
        if percent - last[0] < PROGRESS_STEP:
            return
        last[0] = percent
        _images().filter(pk=image_id, state=Image.State.IMPORTING).update(progress=percent, updated_at=timezone.now())
        image = _images().filter(pk=image_id).first()
        if image is not None:
            send_catalog_event(image=image)

    return update


def _fail_import(image_id: int, message: str) -> None:
    _images().filter(pk=image_id, state=Image.State.IMPORTING).update(
        state=Image.State.FAILED, error=message[:1000], updated_at=timezone.now()
    )
    image = _images().filter(pk=image_id).first()
    if image is not None:
        audit.record(actor=None, verb="image.import_failed", obj=image, extra={"error": message[:300]})
        send_catalog_event(image=image)


def image_download(image_id: int) -> Image | None:
    """Task body of a URL import: download, check, store; then ready or failed. Safe to run twice."""
    image = _images().filter(pk=image_id).first()
    if image is None or image.state != Image.State.IMPORTING or image.source != Image.Source.URL:
        return image
    tmp = image_store.scratch_file(".download")
    key = ""
    try:
        size, sha = download(image.source_url, tmp, max_bytes=settings.SKYPORT_IMAGE_MAX_BYTES,
                             progress=_image_progress(image.pk))
        if image.checksum_sha256 and sha != image.checksum_sha256:
            raise DownloadError(f"The file's SHA-256 is {sha}, not the expected {image.checksum_sha256}.")
        info = qemu.inspect(tmp)
        key = image_store.master_key(uuid.uuid4().hex, info.format)
        image_store.get_store().put_file(key, tmp, move=True)
    except (DownloadError, qemu.ImageRejected, qemu.ConversionError, image_store.StoreError) as exc:
        _fail_import(image.pk, str(exc))
        return _images().get(pk=image.pk)
    except Exception as exc:  # never leave the image importing for ever
        log.exception("image %s: the import failed", image.pk)
        _fail_import(image.pk, f"The import failed ({type(exc).__name__}).")
        return _images().get(pk=image.pk)
    finally:
        _remove(tmp)
    done = _images().filter(pk=image.pk, state=Image.State.IMPORTING).update(
        state=Image.State.READY, progress=100, error="", store_key=key, disk_format=info.format, size_bytes=size,
        virtual_size_bytes=info.virtual_size, checksum_sha256=sha, updated_at=timezone.now(),
        min_disk_gb=max(image.min_disk_gb, -(-info.virtual_size // 1024**3)),
    )
    if not done:  # deleted or finished by another run meanwhile
        image_store.get_store().delete(key)
        return _images().filter(pk=image.pk).first()
    image = _images().get(pk=image.pk)
    audit.record(actor=None, verb="image.import_ready", obj=image,
                 after=audit.snapshot(image, ("state", "disk_format", "size_bytes", "checksum_sha256")))
    send_catalog_event(image=image)
    return image


# --- import a provider image ---------------------------------------------------------------------------------------
def _use_refusal(actor: Any, project: Project, account: CloudAccount, region: str) -> str | None:
    """Why `actor` may not put an image of `project` on this account-region (None: allowed). Org admins managing
    clouds may; others need what a launch there needs (a live grant covering the region and a launching role)."""
    if account.organization_id != project.organization_id:
        return f"{account.name} belongs to another organisation."
    if not account.is_active:
        return f"{account.name} is deactivated."
    if region not in account.all_regions:
        return f"{account.name} is not used in region {region}."
    if get_access(actor).can("clouds.manage", organization_id=account.organization_id):
        return None
    decision = can_launch(actor, account, region, project)
    return None if decision else decision.reason


@transaction.atomic
def image_import_provider(
    *,
    actor: User,
    project: Project,
    cloud_image: CloudImage,
    name: str,
    version: str = "",
    os: str = "",
    os_version: str = "",
    description: str = "",
) -> Image:
    """An image that already exists at a provider: no file, one available copy in that account-region."""
    _require_project(actor, project)
    cloud_image = CloudImage.objects.all_tenants().select_related("account").get(pk=cloud_image.pk)
    if cloud_image.organization_id != project.organization_id:
        raise ServiceError({"cloud_image": "This provider image belongs to another organisation."})
    if not cloud_image.is_active:
        raise ServiceError({"cloud_image": "The provider no longer offers this image (see the last sync)."})
    reason = _use_refusal(actor, project, cloud_image.account, cloud_image.region)
    if reason:
        raise ServiceError({"cloud_image": reason})
    already = _copies().filter(
        account_id=cloud_image.account_id, region=cloud_image.region, provider_image_id=cloud_image.provider_id
    ).select_related("image").first()
    if already is not None:
        raise ServiceError({"cloud_image": f"This provider image is already in the catalog as {already.image}."})
    fields = _clean_fields(name=name or cloud_image.name[:100], version=version, os=os or cloud_image.os[:60],
                           os_version=os_version, arch=cloud_image.arch or "x86_64", description=description)
    _check_unique(project.organization_id, fields["name"], fields["version"])
    image = Image.objects.create(
        organization_id=project.organization_id, project=project, **fields, source=Image.Source.PROVIDER,
        disk_format=cloud_image.disk_format[:16], min_disk_gb=cloud_image.min_disk_gb, state=Image.State.READY,
        progress=100, created_by=actor,
    )
    copy = ImageCopy.objects.create(
        organization_id=project.organization_id, image=image, account=cloud_image.account, region=cloud_image.region,
        disk_format=cloud_image.disk_format[:16], provider_image_id=cloud_image.provider_id,
        state=ImageCopy.State.AVAILABLE, progress=100, requested_by=actor,
    )
    audit.record(
        actor=actor, verb="image.import_provider", obj=image, after=audit.snapshot(image, IMAGE_FIELDS),
        extra={"account": cloud_image.account.name, "region": cloud_image.region,
               "provider_image_id": cloud_image.provider_id},
    )
    send_catalog_event(image=image, copy=copy)
    return image


# --- edit and delete -------------------------------------------------------------------------------------------------
@transaction.atomic
def image_update(*, actor: User, image: Image, **fields: Any) -> Image:
    require_change(actor, image)
    unknown = sorted(set(fields) - set(IMAGE_FIELDS))
    if unknown:
        raise ServiceError(f"These fields cannot be changed: {', '.join(unknown)}.")
    image = _images().select_for_update().get(pk=image.pk)
    before = audit.snapshot(image, IMAGE_FIELDS)
    current = {k: getattr(image, k) for k in ("name", "version", "os", "os_version", "arch", "description")}
    current.update({k: v for k, v in fields.items() if k in current})
    cleaned = _clean_fields(**current)
    for key in ("min_disk_gb", "min_ram_mb"):
        if key in fields:
            try:
                value = int(fields[key])
            except (TypeError, ValueError):
                raise ServiceError({key: "Give a whole number."}) from None
            if value < 0 or value > 1024 * 1024:
                raise ServiceError({key: "Give a number between 0 and 1048576."})
            cleaned[key] = value
    if (cleaned["name"], cleaned["version"]) != (image.name, image.version):
        _check_unique(image.organization_id, cleaned["name"], cleaned["version"], exclude_pk=image.pk)
    for key, value in cleaned.items():
        setattr(image, key, value)
    image.save()
    after = audit.snapshot(image, IMAGE_FIELDS)
    if after != before:
        audit.record(actor=actor, verb="image.update", obj=image, before=before, after=after)
        send_catalog_event(image=image)
    return image


def _image_keys(image: Image) -> list[str]:
    if not image.store_key:
        return []
    return [image.store_key, *(image_store.converted_key(image.store_key, f) for f in qemu.QEMU_FORMATS)]


@transaction.atomic
def image_delete(*, actor: User, image: Image, delete_copies: bool = True) -> list[Operation]:
    """Remove the image from the catalog and its files from the store. With `delete_copies`, the copies Skyport
    pushed are deleted at each provider too, as operations that run once this commits (servers already running
    from them keep running); a provider image adopted with `image_import_provider` is never deleted there.
    Returns those operations."""
    from apps.clouds.operations import operation_start
    from apps.clouds.operations_tasks import operation_enqueue

    require_change(actor, image)
    image = _images().select_for_update().get(pk=image.pk)
    items = CatalogItem.objects.all_tenants().filter(image=image)
    if items.exists():
        names = ", ".join(sorted(items.values_list("name", flat=True))[:5])
        raise ServiceError(f"Catalog items use this image ({names}): remove them first.")
    if _copies().filter(image=image, state__in=ImageCopy.ACTIVE_STATES).exists():
        raise ServiceError("Copies of this image are being pushed: wait until they finish.")
    keys = _image_keys(image)
    removable = []
    if delete_copies and image.source != Image.Source.PROVIDER:
        removable = list(
            _copies().filter(image=image, state=ImageCopy.State.AVAILABLE).exclude(provider_image_id="")
            .select_related("account")
        )
    audit.record(
        actor=actor, verb="image.delete", obj=image, before=audit.snapshot(image, AUDIT_FIELDS),
        extra={"provider_copies_deleted": [f"{c.account.name}/{c.region}" for c in removable]},
    )
    operations = [
        operation_start(
            account=copy.account, region=copy.region, kind="delete_image", project=image.project,
            params={"image_id": copy.provider_image_id}, idempotency_key=f"delete-image-copy-{copy.pk}",
            actor=actor,
        )
        for copy in removable
    ]
    image.delete()
    for operation in operations:
        operation_enqueue(operation.pk)

    def remove_files() -> None:
        store = image_store.get_store()
        for key in keys:
            try:
                store.delete(key)
            except image_store.StoreError:
                log.warning("could not delete %s from the image store", key)

    transaction.on_commit(remove_files)
    return operations


# --- push ----------------------------------------------------------------------------------------------------------
def push_targets(user: User, image: Image) -> list[tuple[CloudAccount, str]]:
    """Account-regions `user` may push `image` to (empty when they may not change it), in a fixed number of
    queries."""
    from apps.catalog.permissions import can_change

    if image.state != Image.State.READY or not image.store_key or not can_change(user, image):
        return []
    access = get_access(user)
    manages = access.can("clouds.manage", organization_id=image.organization_id)
    project = Project.objects.all_tenants().get(pk=image.project_id)
    grants = {
        g.account_id: g
        for g in CloudGrant.objects.all_tenants().filter(project_id=project.pk, revoked_at__isnull=True)
    }
    targets: list[tuple[CloudAccount, str]] = []
    accounts = CloudAccount.objects.all_tenants().filter(organization_id=image.organization_id, is_active=True)
    for account in accounts.order_by("name"):
        for region in account.all_regions:
            if manages and account.health != Health.FAILING:
                targets.append((account, region))
                continue
            decision = LAUNCH_POLICY.decide(
                access=access, account=account, region=region, project=project, grant=grants.get(account.pk)
            )
            if decision:
                targets.append((account, region))
    return targets


def _pushable(image: Image) -> None:
    if image.source == Image.Source.PROVIDER or not image.store_key:
        raise ServiceError(
            "This image exists only at its provider: Skyport has no file to copy elsewhere. Import the disk from a "
            "file or a URL to push it to other clouds."
        )
    if image.state != Image.State.READY:
        raise ServiceError(f"The image is {image.get_state_display().lower()}: only a ready image can be pushed.")


def _start_copy(copy: ImageCopy, actor: User) -> None:
    copy.attempts += 1
    copy.state, copy.progress, copy.error, copy.operation = ImageCopy.State.PENDING, 0, "", None
    copy.requested_by = actor
    copy.save()
    send_catalog_event(copy=copy)
    from apps.catalog.tasks import image_copy_push_task

    copy_id = copy.pk
    transaction.on_commit(lambda: image_copy_push_task.delay(copy_id))


@transaction.atomic
def image_push(*, actor: User, image: Image, targets: list[tuple[CloudAccount, str]]) -> list[ImageCopy]:
    """One copy per account-region: new or failed ones are (re)started, available or active ones left alone."""
    require_change(actor, image)
    image = _images().select_for_update(of=("self",)).select_related("project").get(pk=image.pk)
    _pushable(image)
    wanted = list(dict.fromkeys((account.pk, str(region)) for account, region in targets))
    if not wanted:
        raise ServiceError({"targets": "Choose at least one cloud account and region."})
    accounts = {a.pk: a for a in CloudAccount.objects.all_tenants().filter(pk__in=[pk for pk, _ in wanted])}
    problems = []
    for account_id, region in wanted:
        account = accounts.get(account_id)
        reason = "This cloud account does not exist." if account is None else _use_refusal(
            actor, image.project, account, region
        )
        if reason:
            problems.append(f"{account.name if account else account_id} {region}: {reason}")
    if problems:
        raise ServiceError({"targets": problems})
    copies: list[ImageCopy] = []
    started: list[ImageCopy] = []
    for account_id, region in wanted:
        copy, created = _copies().select_for_update().get_or_create(
            image=image, account=accounts[account_id], region=region,
            defaults={"organization_id": image.organization_id, "requested_by": actor},
        )
        if created or copy.state == ImageCopy.State.FAILED:
            _start_copy(copy, actor)
            started.append(copy)
        copies.append(copy)
    audit.record(
        actor=actor, verb="image.push", obj=image,
        extra={"targets": [f"{c.account.name}/{c.region}" for c in copies],
               "started": [f"{c.account.name}/{c.region}" for c in started]},
    )
    return copies


@transaction.atomic
def image_copy_retry(*, actor: User, copy: ImageCopy) -> ImageCopy:
    """Push one failed copy again (a new attempt: a new operation); the other copies are not touched."""
    rows = _copies().select_for_update(of=("self",)).select_related("image", "image__project", "account")
    copy = rows.get(pk=copy.pk)
    require_change(actor, copy.image)
    if copy.state != ImageCopy.State.FAILED:
        raise ServiceError(f"Only a failed copy can be retried; this one is {copy.get_state_display().lower()}.")
    _pushable(copy.image)
    reason = _use_refusal(actor, copy.image.project, copy.account, copy.region)
    if reason:
        raise ServiceError(reason)
    failed_with = copy.error
    _start_copy(copy, actor)
    audit.record(actor=actor, verb="image_copy.retry", obj=copy, project_id=copy.image.project_id,
                 extra={"account": copy.account.name, "region": copy.region, "attempt": copy.attempts,
                        "previous_error": failed_with[:300]})
    return copy


def target_format(current: str, accepted: tuple[str, ...]) -> str:
    """The master file as it is when the provider takes its format, else the provider's first choice."""
    return current if current in accepted else accepted[0]


def _copy_update(copy_id: int, attempt: int, **fields: Any) -> ImageCopy | None:
    """Update a copy of this attempt (a retry started meanwhile wins) and tell the pages."""
    updated = _copies().filter(pk=copy_id, attempts=attempt).update(updated_at=timezone.now(), **fields)
    if not updated:
        return None
    copy = _copies().get(pk=copy_id)
    send_catalog_event(copy=copy)
    return copy


def _copy_progress(copy_id: int, attempt: int) -> Callable[[int], None]:
    last = [-PROGRESS_STEP]

    def update(percent: int) -> None:
        if percent - last[0] >= PROGRESS_STEP:
            last[0] = percent
            _copy_update(copy_id, attempt, progress=max(0, min(100, percent)))

    return update


# formats whose master is rewritten even when the cloud takes the format: clouds import only stream-optimized VMDKs
# (EC2 VM Import refuses a monolithicSparse one), which is what the conversion writes
REWRITTEN_FORMATS = frozenset({"vmdk"})


def _disk_key(copy: ImageCopy, image: Image, fmt: str) -> str:
    """The store key of the image in `fmt`: the master file, or a converted file (made once, then reused)."""
    if fmt == image.disk_format and fmt not in REWRITTEN_FORMATS:
        return image.store_key
    store = image_store.get_store()
    key = image_store.converted_key(image.store_key, fmt)
    if store.exists(key):
        return key
    _copy_update(copy.pk, copy.attempts, state=ImageCopy.State.CONVERTING, progress=0)
    with store.local_path(image.store_key) as source:
        tmp = image_store.scratch_file(f".{fmt}")
        try:
            qemu.convert(source, image.disk_format, tmp, fmt, _copy_progress(copy.pk, copy.attempts))
            store.put_file(key, tmp, move=True)
        finally:
            _remove(tmp)
    return key


def image_copy_run(copy_id: int) -> ImageCopy | None:
    """Task body of a push: convert when needed, start the push operation and run it. Safe to run twice: the
    operation of an attempt is found by its idempotency key, and a claimed operation is not run a second time."""
    from apps.clouds.operations import operation_start
    from apps.clouds.operations_tasks import operation_run_and_follow

    copy = _copies().select_related("image", "account").filter(pk=copy_id).first()
    if copy is None or not copy.is_active:
        return copy
    if copy.operation_id is not None:
        operation_run_and_follow(copy.operation_id)
        return _copies().filter(pk=copy_id).first()
    image, account, attempt = copy.image, copy.account, copy.attempts
    try:
        _pushable(image)
        accepted = driver_class(account.kind).image_formats
        fmt = target_format(image.disk_format, accepted)
        key = _disk_key(copy, image, fmt)
        store = image_store.get_store()
        holder = f"copy-{copy.pk}-{attempt}"
        path = store.fetch(key, holder)
        size = os.path.getsize(path)
    except ServiceError as exc:
        _copy_update(copy_id, attempt, state=ImageCopy.State.FAILED, error=" ".join(exc.messages)[:1000])
        return _copies().filter(pk=copy_id).first()
    except (qemu.ConversionError, qemu.ImageRejected, image_store.StoreError, CloudError) as exc:
        _copy_update(copy_id, attempt, state=ImageCopy.State.FAILED, error=str(exc)[:1000])
        return _copies().filter(pk=copy_id).first()
    except Exception as exc:  # never leave the copy queued for ever (it could be neither retried nor deleted)
        log.exception("image copy %s: preparing the push failed", copy_id)
        _copy_update(copy_id, attempt, state=ImageCopy.State.FAILED,
                     error=f"Preparing the push failed ({type(exc).__name__}): retry it.")
        return _copies().filter(pk=copy_id).first()
    operation = operation_start(
        account=account,
        region=copy.region,
        kind="push_image",
        params={
            "name": f"{image.name} {image.version}".strip(),
            "path": path,
            "store_key": key,
            "store_holder": holder,
            "disk_format": fmt,
            "arch": image.arch,
            "description": (image.description or f"{image.os} {image.os_version}".strip())[:250],
            "min_disk_gb": image.min_disk_gb,
            "size_bytes": size,
            "tags": {"skyport:image": str(image.pk)},
        },
        idempotency_key=f"push-image-{copy.pk}-{attempt}",
        actor=copy.requested_by,
        project=image.project,
    )
    if not _copy_update(copy_id, attempt, operation=operation, state=ImageCopy.State.UPLOADING, progress=0,
                        disk_format=fmt, size_bytes=size):
        return _copies().filter(pk=copy_id).first()  # a newer attempt took over
    operation_run_and_follow(operation.pk)
    return _copies().filter(pk=copy_id).first()


def image_copy_local_file(operation: Operation) -> str:
    """The push's disk file on this worker (the operation file source of "push_image"): a push resumed on another
    machine than the one that started it fetches the file from the image store again. The store errors are the
    driver's: a StoreError (the file or the store is gone) fails the step."""
    params = operation.params or {}
    try:
        return image_store.get_store().fetch(str(params["store_key"]), str(params.get("store_holder") or ""))
    except (KeyError, ValueError, image_store.StoreError) as exc:
        raise InvalidRequestError(f"The image file of this push cannot be read here: {exc}") from None


def image_copy_follow(operation: Operation) -> None:
    """Bring the image copy of a push operation up to date with it (the operation follower of "push_image")."""
    copy = _copies().filter(operation_id=operation.pk).first()
    if copy is None:
        return
    result = operation.result or {}
    fields: dict[str, Any]
    if operation.state == Operation.State.SUCCEEDED:
        fields = {"state": ImageCopy.State.AVAILABLE, "progress": 100, "error": "",
                  "provider_image_id": str(result.get("image_id") or "")[:255]}
    elif operation.state == Operation.State.FAILED:
        fields = {"state": ImageCopy.State.FAILED, "error": (operation.error or "The push failed.")[:1000]}
    else:
        progress = result.get("progress")
        # a transient provider error is being retried: say so, with when, instead of showing a silent "uploading"
        retrying = bool(operation.error) and operation.next_attempt_at is not None
        note = f"Retrying after: {operation.error}"[:1000] if retrying else ""
        fields = {"state": ImageCopy.State.UPLOADING, "error": note}
        if isinstance(progress, int | float):
            fields["progress"] = max(0, min(100, int(progress)))
    updated = _copies().filter(pk=copy.pk, operation_id=operation.pk).update(updated_at=timezone.now(), **fields)
    if not updated:
        return
    copy = _copies().select_related("image").get(pk=copy.pk)
    send_catalog_event(copy=copy)
    if operation.state in (Operation.State.SUCCEEDED, Operation.State.FAILED):
        key = (operation.params or {}).get("store_key")
        if key:
            with contextlib.suppress(image_store.StoreError, ValueError):
                image_store.get_store().release(str(key), str((operation.params or {}).get("store_holder") or ""))
    if operation.state == Operation.State.SUCCEEDED and copy.provider_image_id:
        _record_provider_image(copy)


def _record_provider_image(copy: ImageCopy) -> None:
    """The synced catalogue shows the new provider image at once (the next sync would find it anyway)."""
    image = copy.image
    CloudImage.objects.all_tenants().update_or_create(
        account_id=copy.account_id, region=copy.region, provider_id=copy.provider_image_id,
        defaults={
            "organization_id": copy.organization_id, "name": f"{image.name} {image.version}".strip()[:255],
            "os": image.os[:100], "arch": image.arch, "owner": "self", "is_public": False, "status": "available",
            "min_disk_gb": image.min_disk_gb, "disk_format": copy.disk_format, "is_active": True,
            "synced_at": timezone.now(),
        },
    )


# --- approval ------------------------------------------------------------------------------------------------------
APPROVAL_FIELDS = ("approval", "approval_note", "approved_by", "approved_at")


@transaction.atomic
def image_approve(*, actor: User, image: Image, note: str = "") -> Image:
    """Allow the image to be launched (security admins and admins)."""
    require(actor, "images.approve", image)
    image = _images().select_for_update().get(pk=image.pk)
    if image.state != Image.State.READY:
        raise ServiceError(f"The image is {image.get_state_display().lower()}: only a ready image can be approved.")
    if image.approval == Image.Approval.APPROVED:
        raise ServiceError("This image is already approved.")
    note = _text(note, 500, "note", "The note")
    before = audit.snapshot(image, APPROVAL_FIELDS)
    image.approval, image.approval_note = Image.Approval.APPROVED, note
    image.approved_by, image.approved_at = actor, timezone.now()
    image.save(update_fields=[*APPROVAL_FIELDS, "updated_at"])
    audit.record(actor=actor, verb="image.approve", obj=image, before=before,
                 after=audit.snapshot(image, APPROVAL_FIELDS))
    send_catalog_event(image=image)
    return image


@transaction.atomic
def image_revoke(*, actor: User, image: Image, note: str) -> Image:
    """Stop new launches of the image (running servers keep running). Needs a reason."""
    require(actor, "images.approve", image)
    image = _images().select_for_update().get(pk=image.pk)
    note = _text(note, 500, "note", "The note")
    if not note:
        raise ServiceError({"note": "Say why the image is revoked: the designers read it."})
    if image.approval == Image.Approval.REVOKED:
        raise ServiceError("This image is already revoked.")
    before = audit.snapshot(image, APPROVAL_FIELDS)
    image.approval, image.approval_note = Image.Approval.REVOKED, note
    image.approved_by, image.approved_at = actor, timezone.now()
    image.save(update_fields=[*APPROVAL_FIELDS, "updated_at"])
    audit.record(actor=actor, verb="image.revoke", obj=image, before=before,
                 after=audit.snapshot(image, APPROVAL_FIELDS))
    send_catalog_event(image=image)
    return image


# --- sharing and object grants ---------------------------------------------------------------------------------------
@transaction.atomic
def image_share(*, actor: User, image: Image, project: Project) -> ImageShare:
    """Let another project of the organisation launch (and publish) the image."""
    require_change(actor, image)
    project = Project.objects.all_tenants().get(pk=project.pk)
    if project.organization_id != image.organization_id:
        raise ServiceError({"project": "This project belongs to another organisation."})
    if project.is_archived:
        raise ServiceError({"project": f"{project.name} is archived."})
    if project.pk == image.project_id:
        raise ServiceError({"project": f"The image belongs to {project.name} already."})
    try:
        with transaction.atomic():
            share = ImageShare.objects.create(
                organization_id=image.organization_id, image=image, project=project, shared_by=actor
            )
    except IntegrityError:
        raise ServiceError({"project": f"The image is already shared with {project.name}."}) from None
    audit.record(actor=actor, verb="image.share", obj=image, extra={"project": project.slug})
    send_catalog_event(image=image)
    return share


@transaction.atomic
def image_unshare(*, actor: User, share: ImageShare) -> None:
    share = ImageShare.objects.all_tenants().select_related("image", "project").get(pk=share.pk)
    require_change(actor, share.image)
    audit.record(actor=actor, verb="image.unshare", obj=share.image, extra={"project": share.project.slug})
    share.delete()
    send_catalog_event(image=share.image)


def _require_grant_rights(actor: Any, image: Image) -> None:
    # object grants are handed out by those whose role lets them change the image, not by other grantees
    if not get_access(actor).can_on("images.manage", image):
        raise PermissionDenied("You are not allowed to let others edit this image (images.manage).")


@transaction.atomic
def image_grant_manage(*, actor: User, image: Image, user: User) -> Image:
    """Let one user (e.g. a designer of another project) edit, push and share this image."""
    from guardian.shortcuts import assign_perm

    _require_grant_rights(actor, image)
    if not user.is_active or image.organization_id not in get_access(user).organization_ids:
        raise ServiceError({"user": f"{user.username} is not a member of this organisation."})
    assign_perm("catalog.manage_image", user, image)
    audit.record(actor=actor, verb="image.grant_manage", obj=image, extra={"user": user.username})
    return image


@transaction.atomic
def image_revoke_manage(*, actor: User, image: Image, user: User) -> Image:
    from guardian.shortcuts import remove_perm

    _require_grant_rights(actor, image)
    remove_perm("catalog.manage_image", user, image)
    audit.record(actor=actor, verb="image.revoke_manage", obj=image, extra={"user": user.username})
    return image

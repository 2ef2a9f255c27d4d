"""Catalog fixtures: a private image store per test, real disk images made with qemu-img, sim cloud accounts for
pushes, and a recorder of live catalog events."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from apps.catalog import images
from apps.catalog.models import Image
from tests.clouds.accounts_world import connect, east, east_granted  # noqa: F401  (cloud account fixtures)
from tests.clouds.fixtures_moto import moto_ec2, moto_ec2_kind, moto_iam_client, moto_server  # noqa: F401
from tests.clouds.fixtures_openstack import openstack_stack  # noqa: F401

QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed (make install adds qemu-utils)")


@pytest.fixture(autouse=True)
def image_store_dir(settings, tmp_path) -> Path:
    """Every catalog test gets its own file store and scratch space (never the repository's var/)."""
    root = tmp_path / "image-store"
    settings.SKYPORT_IMAGE_STORE = "file"
    settings.SKYPORT_IMAGE_DIR = root
    return root


def qemu_create(path: Path, fmt: str, size: str = "16M", *options: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options, str(path), size], check=True)
    return path


def qemu_fill(path: Path, fmt: str, length: str = "4M") -> Path:
    """Write a pattern at the start of the disk, so that conversions have data to copy."""
    if shutil.which("qemu-io"):
        subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 0xa5 0 {length}", str(path)], check=True,
                       capture_output=True)
    return path


@pytest.fixture
def disk(tmp_path):
    """disk("qcow2" | "raw" | "vmdk" | "vpc" | "vhdx", size="16M", *options, name=None, fill=False) → a real image."""
    made = tmp_path / "disks"
    made.mkdir()

    def make(fmt: str, size: str = "16M", *options: str, name: str | None = None, fill: bool = False) -> Path:
        suffix = {"vpc": "vhd"}.get(fmt, fmt)
        path = qemu_create(made / (name or f"disk.{suffix}"), fmt, size, *options)
        return qemu_fill(path, fmt) if fill else path

    return make


def stored_files(root: Path) -> list[Path]:
    store = root / "store"
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.exists() else []


def scratch_files(root: Path) -> list[Path]:
    tmp = root / "tmp"
    return sorted(p for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else []


def upload(actor: Any, project: Any, path: Path, *, name: str = "Debian", version: str = "12", **kwargs: Any) -> Image:
    with path.open("rb") as fileobj:
        return images.image_import_upload(
            actor=actor, project=project, name=name, version=version, fileobj=fileobj, filename=path.name, **kwargs
        )


def upload_bytes(actor: Any, project: Any, data: bytes, filename: str, **kwargs: Any) -> Image:
    kwargs.setdefault("name", "Debian")
    return images.image_import_upload(
        actor=actor, project=project, fileobj=io.BytesIO(data), filename=filename, **kwargs
    )


@pytest.fixture
def live_events(monkeypatch) -> list[dict[str, Any]]:
    """Catalog messages as they are delivered (after their transaction commits)."""
    sent: list[dict[str, Any]] = []
    from apps.core import events

    real = events.send_now

    def record(group: str, message: dict[str, Any]) -> None:
        if group.startswith("catalog."):
            sent.append({"group": group, **message})
        real(group, message)

    monkeypatch.setattr(events, "send_now", record)
    return sent


@pytest.fixture
def s3_store(moto_server, settings):  # noqa: F811
    import boto3

    moto_server.set_auth(False)
    bucket = "skyport-images"
    client = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    settings.SKYPORT_IMAGE_STORE = "s3"
    settings.SKYPORT_IMAGE_S3_ENDPOINT = moto_server.url
    settings.SKYPORT_IMAGE_S3_BUCKET = bucket
    settings.SKYPORT_IMAGE_S3_ACCESS_KEY = "test"
    settings.SKYPORT_IMAGE_S3_SECRET_KEY = "test"
    yield client, bucket
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=item["Key"])

"""`skyport images ...`: listing images, importing one (a file streamed from disk, or a URL the server downloads)
and pushing it to clouds, each with its progress followed until it is done."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from apps.cli.commands.base import DEFAULT_TIMEOUT, Command, Context, matches, project_for, seconds
from apps.cli.errors import CliError, UsageError
from apps.cli.output import Column, col, mib, table
from apps.cli.progress import ProgressLine

POLL_EVERY = 1.0
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")

IMAGE_COLUMNS = [
    col("id", "id"),
    col("name", "name"),
    col("version", "version"),
    col("project", "project_name"),
    col("state", "state"),
    col("approval", "approval"),
    col("format", "disk_format"),
    col("arch", "arch"),
    Column("disk", lambda i: mib(i.get("virtual_size_bytes"))),
]
COPY_COLUMNS = [
    col("id", "id"),
    col("cloud", "account_name"),
    col("region", "region"),
    col("state", "state"),
    Column("progress", lambda c: f"{c.get('progress', 0)}%"),
    col("provider image", "provider_image_id"),
    col("error", "error"),
]


def _label(image: dict[str, Any]) -> str:
    return " ".join(str(p) for p in (image.get("name"), image.get("version")) if p)


# --- list ---------------------------------------------------------------------------------------------------------
def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", metavar="P", help="only images owned by this project (id, slug or name)")
    parser.add_argument("--state", choices=("importing", "ready", "failed"), help="only images in this state")
    parser.add_argument("--search", metavar="TEXT", help="only images whose name has TEXT")


def run_list(ctx: Context) -> int:
    query: dict[str, Any] = {"state": ctx.args.state, "search": ctx.args.search}
    if ctx.args.project:
        query["project"] = project_for(ctx, ctx.args.project, "images.view", "see images")["id"]
    rows = ctx.client().list("images/", query)
    ctx.emit(rows, lambda data: table(data, IMAGE_COLUMNS) if data else "No images.")
    return 0


# --- import -------------------------------------------------------------------------------------------------------
def _configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", metavar="P", help="owner project (id, slug or name); needed if you have several")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True, metavar="V")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, metavar="PATH", help="upload this disk image (qcow2, raw, vmdk, vhd(x))")
    source.add_argument("--url", dest="source_url", metavar="URL", help="the server downloads the image from URL")
    parser.add_argument("--sha256", metavar="HEX", help="refuse the image unless it has this SHA-256")
    parser.add_argument("--os", metavar="OS", help="e.g. Debian")
    parser.add_argument("--os-version", metavar="V", help="e.g. 12")
    parser.add_argument("--arch", choices=("x86_64", "arm64"), help="CPU architecture (default x86_64)")
    parser.add_argument("--description", metavar="TEXT")
    parser.add_argument("--wait", action="store_true", help="with --url: follow the download until it is ready")
    parser.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"with --wait: give up after S seconds (default {DEFAULT_TIMEOUT:g})")


def _upload_progress(progress: ProgressLine, name: str) -> Any:
    def report(sent: int, total: int) -> None:
        percent = 100 * sent // total if total else 100
        progress.update(f"uploading {name}  {percent}%  {mib(sent)} of {mib(total)}")

    return report


def wait_image(ctx: Context, image: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll an importing image until it is ready (or failed: CliError with its error)."""
    progress = ctx.progress()
    deadline = time.monotonic() + timeout
    while image.get("state") == "importing":
        progress.update(f"importing {_label(image)}  {image.get('progress', 0)}%")
        if time.monotonic() >= deadline:
            progress.done()
            raise CliError(f"timed out after {timeout:g} s: image {image['id']} is still importing "
                           f"({image.get('progress', 0)}%)", hints=["  it goes on in the background"])
        time.sleep(POLL_EVERY)
        image = ctx.client().request("GET", f"images/{image['id']}/")
    progress.update(f"{_label(image)}  {image.get('state')}")
    progress.done()
    if image.get("state") == "failed":
        raise CliError(f"the import of {_label(image)} (image {image['id']}) failed: {image.get('error')}")
    return image


def run_import(ctx: Context) -> int:
    args = ctx.args
    if args.sha256 and not SHA256.match(args.sha256):
        raise UsageError("--sha256 takes the 64 hexadecimal digits of a SHA-256")
    if args.file is not None and not args.file.is_file():
        raise UsageError(f"no such file: {args.file}")
    project = project_for(ctx, args.project, "images.manage", "import images")
    meta = {"project": project["id"], "name": args.name, "version": args.version, "os": args.os,
            "os_version": args.os_version, "arch": args.arch, "description": args.description,
            "expected_sha256": args.sha256}
    meta = {k: v for k, v in meta.items() if v is not None}
    if args.file is not None:
        progress = ctx.progress()
        image = ctx.client().upload("images/upload/", meta, args.file, _upload_progress(progress, args.file.name))
        progress.done()
    else:
        image = ctx.client().request("POST", "images/", body={**meta, "url": args.source_url})
    ctx.info(f"Image {_label(image)} (id {image['id']}): {image.get('state')}.")
    if args.wait:
        image = wait_image(ctx, image, args.timeout)
    ctx.emit(image, lambda i: table([i], IMAGE_COLUMNS))
    return 0


# --- push ---------------------------------------------------------------------------------------------------------
def _configure_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", type=int, help="image id (see `skyport images list`)")
    parser.add_argument("--to", action="append", required=True, metavar="ACCOUNT[:REGION]",
                        help="cloud account (id or name), optionally one region; repeatable")
    parser.add_argument("--wait", action="store_true", help="follow every copy until it is available or failed")
    parser.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"with --wait: give up after S seconds (default {DEFAULT_TIMEOUT:g})")


def _slug(text: str) -> str:
    return "-".join(text.lower().split())


def push_targets(wanted: list[str], offered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The account-regions `--to` values name among those the image may be pushed to."""
    chosen: list[dict[str, Any]] = []
    for value in wanted:
        account, _, region = value.partition(":")
        found = [t for t in offered if matches(account, t.get("account"), t.get("account_name"))
                 or _slug(account) == _slug(str(t.get("account_name", "")))]
        if region:
            found = [t for t in found if matches(region, t.get("region"))]
        if not found:
            choices = ", ".join(f"{t['account_name']}:{t['region']}" for t in offered) or "none"
            raise CliError(f"the image cannot be pushed to '{value}' (it can go to: {choices})")
        chosen.extend(t for t in found if t not in chosen)
    return [{"account": t["account"], "region": t["region"]} for t in chosen]


def _copies_line(copies: list[dict[str, Any]]) -> str:
    return "  ".join(f"{c.get('account_name')}/{c.get('region')} {c.get('state')} {c.get('progress', 0)}%"
                     for c in copies)


def wait_copies(ctx: Context, image_id: int, copies: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Poll the copies until none is running; CliError naming each failed one."""
    ids = {c["id"] for c in copies}
    progress = ctx.progress()
    deadline = time.monotonic() + timeout
    while True:
        progress.update(_copies_line(copies))
        if not any(c.get("state") not in ("available", "failed") for c in copies):
            break
        if time.monotonic() >= deadline:
            progress.done()
            raise CliError(f"timed out after {timeout:g} s: {_copies_line(copies)}",
                           hints=["  the copies go on in the background"])
        time.sleep(POLL_EVERY)
        fresh = ctx.client().list("image-copies/", {"image": image_id})
        copies = sorted((c for c in fresh if c["id"] in ids), key=lambda c: c["id"])
    progress.done()
    failed = [c for c in copies if c.get("state") == "failed"]
    if failed:
        raise CliError(f"{len(failed)} of {len(copies)} copies failed",
                       hints=[f"  {c['account_name']}/{c['region']}: {c.get('error')}" for c in failed])
    return copies


def run_push(ctx: Context) -> int:
    offered = ctx.client().request("GET", f"images/{ctx.args.id}/push-targets/")
    targets = push_targets(ctx.args.to, offered)
    copies = ctx.client().request("POST", f"images/{ctx.args.id}/push/", body={"targets": targets})
    copies = sorted(copies, key=lambda c: c["id"])
    if ctx.args.wait:
        copies = wait_copies(ctx, ctx.args.id, copies, ctx.args.timeout)
    ctx.emit(copies, lambda rows: table(rows, COPY_COLUMNS))
    return 0


COMMANDS = [
    Command(
        name="images list",
        help="list images",
        description="The images of your organisation: their import state, approval, format and disk size.",
        examples="""\
  skyport images list
  skyport images list --project web --state ready
  skyport -o json images list | jq '.[] | {id, name, approval}'""",
        calls=(("GET", "/api/v1/images/"), ("GET", "/api/v1/me/")),
        configure=_configure_list,
        run=run_list,
    ),
    Command(
        name="images import",
        help="upload a disk image, or import one from a URL",
        description="Upload a disk image file (streamed from disk, with a progress line; the server checks it "
        "with qemu-img before keeping it), or have the server download it from a URL (--wait follows the "
        "download until the image is ready). Images need a security admin's approval before they can be "
        "launched.",
        examples="""\
  skyport images import --project web --name Debian --version 12 --os Debian --file debian-12.qcow2 \\
      --sha256 $(sha256sum debian-12.qcow2 | cut -d' ' -f1)
  skyport images import --project web --name Ubuntu --version 24.04 --wait \\
      --url https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img""",
        calls=(("GET", "/api/v1/me/"), ("POST", "/api/v1/images/upload/"), ("POST", "/api/v1/images/"),
               ("GET", "/api/v1/images/{id}/")),
        configure=_configure_import,
        run=run_import,
        server_url_option=False,
    ),
    Command(
        name="images push",
        help="copy an image to cloud accounts and regions",
        description="Copy an image to cloud account-regions (converted to the format each cloud takes). "
        "ACCOUNT alone means every region of it the image may go to. --wait follows every copy until it is "
        "available or failed (exit 1 naming the failed ones).",
        examples="""\
  skyport images push 7 --to sim-west --to sim-east:east-1 --wait
  skyport -o json images push 7 --to aws-prod:eu-west-1 | jq '.[].id'""",
        calls=(("GET", "/api/v1/images/{id}/push-targets/"), ("POST", "/api/v1/images/{id}/push/"),
               ("GET", "/api/v1/image-copies/")),
        configure=_configure_push,
        run=run_push,
    ),
]

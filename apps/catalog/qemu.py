"""Disk image inspection and conversion with qemu-img, done safely.

An uploaded file is hostile until proven otherwise: a qcow2 with a backing file or an external data file, or a VMDK
descriptor naming other files, makes qemu-img read files of this server. So the format is never taken from the
user nor guessed by qemu-img: it is detected here from the file's own header (the risky features are refused before
qemu-img ever sees the file), then confirmed with `qemu-img info -f <format>` and its answer checked again.

qemu-img always runs under `prlimit` (address space and CPU time) and a wall-clock timeout, so a crafted file can
only make it fail, never take the machine down. Messages name the file by its base name only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings

# our names (the ones stored on images and given to drivers) → qemu-img's names
QEMU_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc", "vhdx": "vhdx"}
# output options per target format: single-file formats the clouds import
OUTPUT_OPTIONS = {"vmdk": ["-o", "subformat=streamOptimized"], "vhd": ["-o", "subformat=fixed,force_size=on"]}
TEXT_SAMPLE = 64 * 1024
VMDK_TYPES = frozenset({"monolithicSparse", "streamOptimized"})
MAX_DESCRIPTOR = 1024 * 1024
PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class ImageRejected(Exception):
    """The file is not a disk image Skyport accepts; `message` says why, for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConversionError(Exception):
    """qemu-img could not convert (or inspect) the file: it failed, ran out of its limits or timed out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class DiskInfo:
    format: str  # our name: raw, qcow2, vmdk, vhd, vhdx
    virtual_size: int
    actual_size: int
    backing_file: str | None = None
    data_file: str | None = None
    extents: tuple[str, ...] = field(default=())


# --- limits ------------------------------------------------------------------------------------------------------


def _limited(args: list[str], *, memory: int, cpu: int) -> list[str]:
    prlimit = shutil.which("prlimit")
    if not prlimit:  # qemu-img never runs on an untrusted file without its limits
        raise ConversionError("prlimit is not installed on this server (package util-linux): disk images cannot be "
                              "checked or converted safely.")
    return [prlimit, f"--as={int(memory)}", f"--cpu={int(cpu)}", "--", _qemu_img(), *args]


def _qemu_img() -> str:
    found = shutil.which("qemu-img")
    if not found:
        raise ConversionError("qemu-img is not installed on this server (package qemu-utils).")
    return found


def _clean_stderr(stderr: bytes | str, paths: tuple[str, ...]) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    for path in sorted(paths, key=len, reverse=True):
        if path:
            text = text.replace(path, os.path.basename(path))
    # any other absolute path: its base name only
    text = re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)", r"\1", text)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text[:400]


def _failure(returncode: int, stderr: bytes, paths: tuple[str, ...], what: str) -> ConversionError:
    detail = _clean_stderr(stderr, paths)
    if returncode < 0 or returncode in (134, 137, 139) or not detail:
        reason = f"qemu-img stopped (exit {returncode})"
        if "Resource temporarily unavailable" in detail or "failed to map" in detail or returncode < 0:
            reason += ": it ran out of the memory or CPU time it is allowed"
        return ConversionError(f"Could not {what}: {reason}.")
    return ConversionError(f"Could not {what}: {detail}")


# --- format detection --------------------------------------------------------------------------------------------


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def looks_like_text(sample: bytes) -> bool:
    """No NUL byte and (nearly) only printable characters: a document, a script or an HTML page."""
    if not sample or b"\x00" in sample:
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the end of the sample
        try:
            text = sample[:-4].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(1 for c in text if c.isprintable() or c in "\r\n\t\f\v")
    return printable >= 0.98 * max(len(text), 1)


def _qcow2_check(path: str, name: str) -> None:
    header = _read(path, 0, 104)
    if len(header) < 72:
        raise ImageRejected(f"{name} is not a valid qcow2 image: its header is cut short.")
    version = struct.unpack(">I", header[4:8])[0]
    if version not in (2, 3):
        raise ImageRejected(f"{name} is a qcow version {version} image: only qcow2 (versions 2 and 3) is accepted.")
    backing_offset = struct.unpack(">Q", header[8:16])[0]
    if backing_offset:
        raise ImageRejected(
            f"{name} is a qcow2 image with a backing file: it depends on another file. Flatten it first "
            "(qemu-img convert -O qcow2 image.qcow2 flat.qcow2) and upload the result."
        )
    if version == 3 and len(header) >= 80:
        incompatible = struct.unpack(">Q", header[72:80])[0]
        if incompatible & 0x4:
            raise ImageRejected(
                f"{name} is a qcow2 image with an external data file: its data lives in another file. Convert it "
                "to a self-contained image first (qemu-img convert -O qcow2 image.qcow2 single.qcow2)."
            )


def _descriptor_text(path: str, offset: int) -> str:
    """The descriptor text qemu reads at `offset`: up to 1 MiB, to the first NUL (whatever size the header says)."""
    return _read(path, offset, MAX_DESCRIPTOR).split(b"\x00", 1)[0].decode("utf-8", "replace")


def _vmdk_sparse_check(path: str, name: str) -> None:
    header = _read(path, 0, 512)
    if len(header) < 44:
        raise ImageRejected(f"{name} is not a valid VMDK image: its header is cut short.")
    capacity = struct.unpack("<Q", header[12:20])[0]
    desc_offset, desc_size = struct.unpack("<QQ", header[28:44])
    if desc_offset and capacity == 0:
        # qemu then reads the embedded descriptor as a descriptor file, extents (other files) included
        raise ImageRejected(
            f"{name} is a VMDK whose disk is described by its embedded descriptor (other files may hold the data): "
            "only single-file VMDKs (monolithicSparse or streamOptimized) are accepted."
        )
    if desc_size * 512 > MAX_DESCRIPTOR:
        raise ImageRejected(f"{name} is not a valid VMDK image: its descriptor is too large.")
    # qemu looks for a parent (parentFileNameHint) in the descriptor right after the header, whatever the header says
    texts = [_descriptor_text(path, 512)]
    if desc_offset and desc_offset != 1:
        texts.append(_descriptor_text(path, desc_offset * 512))
    for descriptor in texts:
        if "parentFileNameHint" in descriptor:  # qemu finds it anywhere in the text (strstr), not only on a line
            raise ImageRejected(
                f"{name} is a VMDK with a parent disk (parentFileNameHint): it depends on another file. Flatten "
                "it first (qemu-img convert -O vmdk -o subformat=streamOptimized image.vmdk flat.vmdk)."
            )
        create_type = ""
        extents = []
        for raw_line in descriptor.splitlines():
            line = raw_line.strip()
            match = re.match(r'createType\s*=\s*"?([A-Za-z]+)"?', line)
            if match:
                create_type = match.group(1)
            elif re.match(r"(RW|RDONLY|NOACCESS)\s", line):
                extents.append(line)
        if desc_offset and create_type and create_type not in VMDK_TYPES:
            raise ImageRejected(
                f"{name} is a VMDK of type {create_type}: only single-file VMDKs (monolithicSparse or "
                "streamOptimized) are accepted."
            )
        if desc_offset and len(extents) > 1:
            raise ImageRejected(f"{name} is a VMDK with several extents: only single-file VMDKs are accepted.")


def detect_format(path: str) -> str:
    """Our name for the file's format, from its own bytes; ImageRejected for what Skyport refuses outright."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size == 0:
        raise ImageRejected(f"{name} is empty.")
    head = _read(path, 0, TEXT_SAMPLE)
    if head.startswith(b"QFI\xfb"):
        _qcow2_check(path, name)
        return "qcow2"
    if head.startswith(b"KDMV"):
        _vmdk_sparse_check(path, name)
        return "vmdk"
    if head.startswith(b"COWD"):
        raise ImageRejected(f"{name} is an old ESX VMDK (COWD): convert it to a monolithicSparse VMDK or qcow2.")
    if head.lstrip().startswith(b"# Disk DescriptorFile"):
        raise ImageRejected(
            f"{name} is a VMDK descriptor: its disk data lives in other files (external extents). Upload a single-file "
            "VMDK (monolithicSparse or streamOptimized) or convert it to qcow2."
        )
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix") or (size >= 512 and _read(path, size - 512, 8) == b"conectix"):
        return "vhd"
    if head.startswith(b"<<< ") and _read(path, 0x40, 4) == b"\x7f\x10\xda\xbe":
        raise ImageRejected(f"{name} is a VirtualBox VDI image: convert it to qcow2 or raw first.")
    if head.startswith(b"LUKS\xba\xbe"):
        raise ImageRejected(f"{name} is an encrypted (LUKS) volume: upload an unencrypted disk image.")
    if looks_like_text(head):
        raise ImageRejected(f"This file is not a disk image: it looks like text ({name}).")
    return "raw"


# --- qemu-img ------------------------------------------------------------------------------------------------------


def _info(path: str, fmt: str) -> dict[str, object]:
    args = ["info", "--output=json", "-f", QEMU_FORMATS[fmt], path]
    try:
        done = subprocess.run(  # noqa: S603
            _limited(
                args, memory=settings.SKYPORT_IMAGE_QEMU_MEMORY_BYTES, cpu=settings.SKYPORT_IMAGE_QEMU_CPU_SECONDS
            ),
            capture_output=True,
            timeout=settings.SKYPORT_IMAGE_QEMU_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ImageRejected(f"Inspecting {os.path.basename(path)} took too long: the file was refused.") from None
    if done.returncode != 0:
        detail = _failure(done.returncode, done.stderr, (path,), f"read {os.path.basename(path)} as {fmt}")
        raise ImageRejected(detail.message)
    try:
        info = json.loads(done.stdout)
    except ValueError:
        raise ImageRejected(f"qemu-img gave no readable answer about {os.path.basename(path)}.") from None
    if not isinstance(info, dict):
        raise ImageRejected(f"qemu-img gave no readable answer about {os.path.basename(path)}.")
    return info


def inspect(path: str, *, max_virtual_size: int | None = None) -> DiskInfo:
    """Detect and confirm the format; refuse backing files, external data files and extents, oversized disks."""
    name = os.path.basename(path)
    fmt = detect_format(path)
    info = _info(path, fmt)
    reported = str(info.get("format") or "")
    if reported != QEMU_FORMATS[fmt]:
        raise ImageRejected(f"{name} does not read as {fmt} (qemu-img says {reported or 'nothing'}).")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise ImageRejected(f"{name} has a backing file: it depends on another file. Flatten it first.")
    specific = info.get("format-specific") or {}
    data = specific.get("data", {}) if isinstance(specific, dict) else {}
    data = data if isinstance(data, dict) else {}
    data_file = data.get("data-file")
    if data_file:
        raise ImageRejected(f"{name} has an external data file: its data lives in another file.")
    extents: list[str] = []
    if fmt == "vmdk":
        real = os.path.realpath(path)
        for extent in data.get("extents") or []:
            filename = str(extent.get("filename", "")) if isinstance(extent, dict) else ""
            extents.append(os.path.basename(filename))
            if os.path.realpath(filename) != real:
                raise ImageRejected(
                    f"{name} is a VMDK with external extents ({os.path.basename(filename)}): only single-file VMDKs "
                    "are accepted."
                )
    try:
        virtual_size = int(info.get("virtual-size") or 0)  # type: ignore[call-overload]
        actual_size = int(info.get("actual-size") or os.path.getsize(path))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ImageRejected(f"qemu-img gave no readable size for {name}.") from None
    if virtual_size <= 0:
        raise ImageRejected(f"{name} declares no disk size.")
    limit = settings.SKYPORT_IMAGE_MAX_VIRTUAL_BYTES if max_virtual_size is None else max_virtual_size
    if virtual_size > limit:
        raise ImageRejected(
            f"{name} declares a {_human(virtual_size)} disk: the limit is {_human(limit)}."
        )
    return DiskInfo(
        format=fmt, virtual_size=virtual_size, actual_size=actual_size, backing_file=None, data_file=None,
        extents=tuple(extents),
    )


def convert(
    src: str,
    src_format: str,
    dst: str,
    dst_format: str,
    progress_cb: Callable[[int], None] | None = None,
    *,
    step: int = 5,
    memory: int | None = None,
    cpu: int | None = None,
    timeout: float | None = None,
) -> None:
    """`qemu-img convert -p -f <src> -O <dst>` under limits, reporting progress every `step` percent at most."""
    if src_format not in QEMU_FORMATS or dst_format not in QEMU_FORMATS:
        raise ConversionError(f"Cannot convert from {src_format} to {dst_format}.")
    args = ["convert", "-p", "-f", QEMU_FORMATS[src_format], "-O", QEMU_FORMATS[dst_format],
            *OUTPUT_OPTIONS.get(dst_format, []), src, dst]
    command = _limited(
        args,
        memory=memory or settings.SKYPORT_IMAGE_CONVERT_MEMORY_BYTES,
        cpu=cpu or settings.SKYPORT_IMAGE_CONVERT_CPU_SECONDS,
    )
    what = f"convert {os.path.basename(src)} to {dst_format}"
    limit = timeout or settings.SKYPORT_IMAGE_CONVERT_TIMEOUT
    process = subprocess.Popen(  # noqa: S603
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read() if process.stderr else b""))
    reader.daemon = True
    reader.start()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(limit, expire)
    timer.daemon = True
    timer.start()
    last = -step
    buffer = b""
    try:
        assert process.stdout is not None
        while True:
            chunk = process.stdout.read1(256) if hasattr(process.stdout, "read1") else process.stdout.read(256)
            if not chunk:
                break
            buffer = (buffer + chunk)[-512:]
            matches = PROGRESS_RE.findall(buffer)
            if matches and progress_cb is not None:
                percent = min(100, int(float(matches[-1])))
                if percent - last >= step or (percent == 100 and last < 100):
                    last = percent
                    progress_cb(percent)
            if matches:
                buffer = buffer[buffer.rfind(b")") + 1:]
        returncode = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    if expired.is_set():
        _remove(dst)
        raise ConversionError(f"Could not {what}: it took longer than {int(limit)} seconds.")
    if returncode != 0:
        _remove(dst)
        raise _failure(returncode, b"".join(stderr_chunks), (src, dst), what)
    if progress_cb is not None and last < 100:
        progress_cb(100)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


human_size = _human

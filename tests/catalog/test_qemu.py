"""qemu-img inspection and conversion on real disk images: formats detected from their own bytes, files that would
make qemu-img read other files refused before it runs, conversions with progress, and qemu-img kept under limits."""

from __future__ import annotations

import json
import subprocess

import pytest

from apps.catalog import qemu
from apps.catalog.qemu import ConversionError, ImageRejected
from tests.catalog.conftest import needs_qemu

pytestmark = needs_qemu


def info_format(path) -> str:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True)
    return json.loads(out.stdout)["format"]


@pytest.mark.parametrize(
    ("fmt", "expected"), [("qcow2", "qcow2"), ("raw", "raw"), ("vmdk", "vmdk"), ("vpc", "vhd"), ("vhdx", "vhdx")]
)
def test_formats_are_detected_and_confirmed(disk, fmt, expected):
    path = disk(fmt, "16M", fill=True)
    info = qemu.inspect(str(path))
    assert info.format == expected
    assert info.virtual_size >= 16 * 1024 * 1024
    assert info.backing_file is None and info.data_file is None


def test_fixed_vhd_is_detected_by_its_footer(disk):
    path = disk("vpc", "16M", "-o", "subformat=fixed")
    assert path.read_bytes()[:8] != b"conectix"  # the footer is only at the end
    assert qemu.inspect(str(path)).format == "vhd"


def test_single_file_vmdk_lists_itself_as_its_extent(disk):
    path = disk("vmdk", "16M", "-o", "subformat=streamOptimized")
    info = qemu.inspect(str(path))
    assert info.format == "vmdk"
    assert info.extents == (path.name,)


def test_text_file_renamed_qcow2_is_refused(tmp_path):
    path = tmp_path / "notes.qcow2"
    path.write_text("#!/bin/sh\necho this is a shell script, not a disk\n" * 50)
    with pytest.raises(ImageRejected) as caught:
        qemu.inspect(str(path))
    assert "This file is not a disk image: it looks like text" in caught.value.message


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.raw"
    path.write_bytes(b"")
    with pytest.raises(ImageRejected, match="empty"):
        qemu.inspect(str(path))


def test_qcow2_with_backing_file_is_refused(disk):
    base = disk("qcow2", "16M", name="base.qcow2")
    top = disk("qcow2", "16M", "-b", str(base), "-F", "qcow2", name="top.qcow2")
    with pytest.raises(ImageRejected) as caught:
        qemu.inspect(str(top))
    assert "backing file" in caught.value.message
    assert str(base.parent) not in caught.value.message  # no server path in the message


def test_qcow2_with_external_data_file_is_refused(disk, tmp_path):
    data_file = tmp_path / "disks" / "data.raw"
    path = disk("qcow2", "16M", "-o", f"data_file={data_file}", name="external.qcow2")
    assert data_file.exists()
    with pytest.raises(ImageRejected) as caught:
        qemu.inspect(str(path))
    assert "external data file" in caught.value.message


def test_vmdk_descriptor_with_external_extents_is_refused(disk):
    path = disk("vmdk", "16M", "-o", "subformat=monolithicFlat", name="flat.vmdk")
    assert (path.parent / "flat-flat.vmdk").exists()  # the descriptor names this extent
    with pytest.raises(ImageRejected) as caught:
        qemu.inspect(str(path))
    assert "external extents" in caught.value.message


def test_vmdk_with_extents_elsewhere_is_refused_after_qemu_img(disk, monkeypatch):
    """Defence in depth: even a header that passed the byte checks is refused when qemu-img reports an extent that
    is not the file itself."""
    path = disk("vmdk", "16M")
    answer = {"format": "vmdk", "virtual-size": 16 << 20, "actual-size": 4096,
              "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/etc/shadow"}]}}}
    monkeypatch.setattr(qemu, "_info", lambda p, f: answer)
    with pytest.raises(ImageRejected, match="external extents"):
        qemu.inspect(str(path))


def test_declared_virtual_size_over_the_limit_is_refused(disk):
    path = disk("qcow2", "64G")  # sparse: a few hundred KiB on disk
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(ImageRejected, match="limit"):
        qemu.inspect(str(path), max_virtual_size=10 * 1024**3)
    assert qemu.inspect(str(path), max_virtual_size=100 * 1024**3).virtual_size == 64 * 1024**3


def test_binary_data_without_a_known_header_is_raw(tmp_path):
    path = tmp_path / "blob.img"
    path.write_bytes(bytes(range(256)) * 4096)
    assert qemu.inspect(str(path)).format == "raw"


def test_vdi_and_old_qcow_are_refused(tmp_path, disk):
    vdi = disk("vdi", "16M", name="box.vdi")
    with pytest.raises(ImageRejected, match="VirtualBox"):
        qemu.inspect(str(vdi))
    qcow1 = tmp_path / "old.qcow"
    qcow1.write_bytes(b"QFI\xfb\x00\x00\x00\x01" + b"\x00" * 4088)
    with pytest.raises(ImageRejected, match="version 1"):
        qemu.inspect(str(qcow1))


@pytest.mark.parametrize(
    ("target", "qemu_name"), [("raw", "raw"), ("vmdk", "vmdk"), ("vhd", "vpc"), ("qcow2", "qcow2")]
)
def test_real_conversions_report_progress(disk, tmp_path, target, qemu_name):
    source = disk("qcow2", "64M", fill=True, name="source.qcow2")
    if target == "qcow2":
        source = disk("raw", "64M", fill=True, name="source.raw")
    seen: list[int] = []
    out = tmp_path / f"out.{target}"
    qemu.convert(str(source), qemu.inspect(str(source)).format, str(out), target, seen.append)
    if target != "vhd":  # qemu-img's own probing cannot see a fixed VHD (its header is a footer)
        assert info_format(out) == qemu_name
    assert qemu.inspect(str(out)).format == target
    assert seen and seen[-1] == 100
    assert seen == sorted(seen)
    if target == "vhd":  # EC2 takes fixed VHDs: the footer is at the end
        assert out.read_bytes()[-512:][:8] == b"conectix"
    if target == "vmdk":
        converted = subprocess.run(["qemu-img", "info", "--output=json", str(out)], capture_output=True, check=True)
        assert json.loads(converted.stdout)["format-specific"]["data"]["create-type"] == "streamOptimized"


def test_progress_is_reported_every_few_percent_at_most(disk, tmp_path):
    source = disk("qcow2", "64M", fill=True)
    seen: list[int] = []
    qemu.convert(str(source), "qcow2", str(tmp_path / "out.raw"), "raw", seen.append, step=25)
    assert all(b - a >= 25 for a, b in zip(seen, seen[1:-1], strict=False))
    assert seen[-1] == 100


def test_qemu_img_runs_under_prlimit(disk, tmp_path, monkeypatch):
    calls: list[list[str]] = []
    real = subprocess.Popen

    def spy(args, *rest, **kwargs):
        calls.append(list(args))
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    source = disk("qcow2", "16M")
    qemu.convert(str(source), "qcow2", str(tmp_path / "out.raw"), "raw")
    command = next(c for c in calls if "convert" in c)
    assert command[0].endswith("prlimit")
    assert any(part.startswith("--as=") for part in command) and any(part.startswith("--cpu=") for part in command)


def test_conversion_beyond_its_memory_limit_fails_cleanly(disk, tmp_path):
    source = disk("qcow2", "16M", fill=True)
    out = tmp_path / "out.raw"
    with pytest.raises(ConversionError) as caught:
        qemu.convert(str(source), "qcow2", str(out), "raw", memory=20 * 1024 * 1024)
    assert "Could not convert disk.qcow2 to raw" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert not out.exists()


def test_inspection_beyond_its_memory_limit_is_a_refusal(disk, settings):
    settings.SKYPORT_IMAGE_QEMU_MEMORY_BYTES = 20 * 1024 * 1024
    with pytest.raises(ImageRejected, match="Could not read"):
        qemu.inspect(str(disk("qcow2", "16M")))


def test_conversion_timeout_stops_qemu_img(disk, tmp_path, monkeypatch):
    hanging = tmp_path / "hanging-qemu-img"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(qemu, "_qemu_img", lambda: str(hanging))
    with pytest.raises(ConversionError, match="took longer"):
        qemu.convert(str(disk("qcow2")), "qcow2", str(tmp_path / "out.vhd"), "vhd", timeout=0.5)
    assert not (tmp_path / "out.vhd").exists()


def test_unknown_formats_are_not_converted(disk, tmp_path):
    with pytest.raises(ConversionError, match="Cannot convert"):
        qemu.convert(str(disk("qcow2")), "qcow2", str(tmp_path / "x"), "iso")

"""Skyport's deploy checks: what an operator must fix before running in production."""

from __future__ import annotations

import shutil

from apps.core.checks import skyport_deploy_checks


def _ids(settings) -> set[str]:
    return {w.id for w in skyport_deploy_checks(None)}


def test_image_tools_and_store_are_checked(settings, monkeypatch):
    settings.SKYPORT_IMAGE_STORE = "file"
    assert "skyport.W004" not in _ids(settings)  # qemu-img and prlimit are installed by `make install`
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "qemu-img" else real(name))
    [warning] = [w for w in skyport_deploy_checks(None) if w.id == "skyport.W004"]
    assert warning.msg.startswith("qemu-img not found") and "qemu-utils" in warning.hint
    monkeypatch.setattr(shutil, "which", real)

    settings.SKYPORT_IMAGE_STORE, settings.SKYPORT_IMAGE_S3_BUCKET = "s3", ""
    assert "skyport.W005" in _ids(settings)
    settings.SKYPORT_IMAGE_S3_BUCKET = "images"
    assert "skyport.W005" not in _ids(settings)

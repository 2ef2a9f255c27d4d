"""Skyport's own deploy checks, run by `manage.py check --deploy`."""

from __future__ import annotations

import shutil
from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def skyport_deploy_checks(app_configs: Any, **kwargs: Any) -> list[Warning]:
    problems = []
    if not settings.SKYPORT_FERNET_KEYS:
        problems.append(
            Warning(
                "SKYPORT_FERNET_KEYS is not set: cloud credentials would be encrypted with a key derived from "
                "SECRET_KEY.",
                hint="Generate one with `python manage.py generate_fernet_key` and set SKYPORT_FERNET_KEYS.",
                id="skyport.W001",
            )
        )
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        problems.append(
            Warning(
                "SQLite is the embedded default; production runs on PostgreSQL.",
                hint="Set DATABASE_URL=postgres://...",
                id="skyport.W002",
            )
        )
    if not settings.REDIS_URL:
        problems.append(
            Warning(
                "REDIS_URL is not set: live updates, the shared cache and the sign-in throttle stay inside one "
                "process, and Celery runs tasks inline.",
                hint="Set REDIS_URL=redis://host:6379/0",
                id="skyport.W003",
            )
        )
    missing = [tool for tool in ("qemu-img", "prlimit") if shutil.which(tool) is None]
    if missing:
        problems.append(
            Warning(
                f"{' and '.join(missing)} not found: images cannot be checked or converted.",
                hint="Install Debian's qemu-utils (qemu-img) and util-linux (prlimit) on every web and worker host.",
                id="skyport.W004",
            )
        )
    if settings.SKYPORT_IMAGE_STORE == "s3" and not settings.SKYPORT_IMAGE_S3_BUCKET:
        problems.append(
            Warning(
                "SKYPORT_IMAGE_STORE is s3 but SKYPORT_IMAGE_S3_BUCKET is empty.",
                hint="Set SKYPORT_IMAGE_S3_BUCKET and its endpoint and keys, or use the file store on a shared volume.",
                id="skyport.W005",
            )
        )
    return problems

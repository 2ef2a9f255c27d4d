"""Re-encrypt every stored secret — cloud credentials and launch hook secrets — with the first key of
SKYPORT_FERNET_KEYS (after a new key was put in front). Safe to run twice; afterwards the old key can be dropped."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from apps.clouds.models import CloudAccount
from apps.core import crypto


class Command(BaseCommand):
    help = "Re-encrypt cloud credentials and hook secrets with the newest SKYPORT_FERNET_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        ids = list(CloudAccount.objects.all_tenants().order_by("pk").values_list("pk", flat=True))
        done = 0
        for n, pk in enumerate(ids, 1):
            with transaction.atomic():
                account = CloudAccount.objects.all_tenants().select_for_update().get(pk=pk)
                account.credentials_encrypted = crypto.rotate(account.credentials_encrypted)
                account.save(update_fields=["credentials_encrypted"])
                done += 1
            self.stdout.write(f"\r{n}/{len(ids)} accounts re-encrypted", ending="")
        self.stdout.write("")
        from apps.deployments.models import Hook

        hooks = 0
        for pk in Hook.objects.all_tenants().order_by("pk").values_list("pk", flat=True):
            with transaction.atomic():
                hook = Hook.objects.all_tenants().select_for_update().get(pk=pk)
                hook.secret_encrypted = crypto.rotate(hook.secret_encrypted)
                hook.save(update_fields=["secret_encrypted"])
                hooks += 1
        self.stdout.write(self.style.SUCCESS(
            f"{done} cloud account credentials and {hooks} hook secrets re-encrypted with the newest key."))

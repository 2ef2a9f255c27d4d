import os
from pathlib import Path

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Print a new key for SKYPORT_FERNET_KEYS (comma-separated; the first one encrypts), or with --write create "
        "the local key file (settings.SKYPORT_FERNET_KEYS_FILE) when it does not exist yet."
    )

    def add_arguments(self, parser):
        parser.add_argument("--write", action="store_true", help="create the local key file if missing (mode 0600)")

    def handle(self, *args, **options):
        if not options["write"]:
            self.stdout.write(Fernet.generate_key().decode())
            return
        path = Path(settings.SKYPORT_FERNET_KEYS_FILE)
        if path.exists():
            self.stdout.write(f"{path} exists; keeping it")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Fernet.generate_key().decode() + "\n")
        self.stdout.write(f"wrote a new key to {path}")

from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print a new key for SKYPORT_FERNET_KEYS (comma-separated; the first one encrypts)."

    def handle(self, *args, **options):
        self.stdout.write(Fernet.generate_key().decode())

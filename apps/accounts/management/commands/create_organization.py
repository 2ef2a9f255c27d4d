"""Bootstrap an installation: an organisation with its first admin (created, or an existing user), from the command
line. Everything after that is done by that admin in the portal or through the API (invitations, projects, clouds).

    python manage.py create_organization --name "Acme" --slug acme --admin sam --email sam@acme.example
    (the new admin's password is read from SKYPORT_ADMIN_PASSWORD, or asked for on a terminal)
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.accounts import services
from apps.accounts.models import User


class Command(BaseCommand):
    help = "Create an organisation and its first admin (a new user, or an existing one by username)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", required=True, help="the organisation's name")
        parser.add_argument("--slug", required=True, help="its short name in URLs (letters, digits, '-')")
        parser.add_argument("--admin", required=True, help="username of the first admin (created when missing)")
        parser.add_argument("--email", help="the new admin's email (required when the user is created)")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["admin"]
        user = User.objects.filter(username=username).first()
        with transaction.atomic():
            if user is None:
                if not options.get("email"):
                    raise CommandError(f"User {username} does not exist: give --email to create them.")
                password = os.environ.get("SKYPORT_ADMIN_PASSWORD") or self._ask_password()
                user = User(username=username, email=options["email"])
                try:
                    validate_password(password, user)
                except ValidationError as exc:
                    raise CommandError("The password is refused: " + " ".join(exc.messages)) from None
                user.set_password(password)
                user.save()
            try:
                org = services.organization_create(actor=None, name=options["name"], slug=options["slug"],
                                                   admin=user)
            except ValidationError as exc:
                raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(self.style.SUCCESS(f"Organisation {org.name} ({org.slug}) created; {user.username} is its "
                                             "admin and can sign in now."))

    def _ask_password(self) -> str:
        if not os.isatty(0):
            raise CommandError("Set SKYPORT_ADMIN_PASSWORD, or run this on a terminal to be asked for the password.")
        first = getpass.getpass("Password for the new admin: ")
        if first != getpass.getpass("Again: "):
            raise CommandError("The two passwords differ.")
        return first

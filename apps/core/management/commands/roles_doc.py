from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.core.roles import render_markdown


class Command(BaseCommand):
    help = "Print docs/roles.md from the role table (--write to update the file, --check to fail when it drifted)."

    def add_arguments(self, parser):
        parser.add_argument("--write", action="store_true")
        parser.add_argument("--check", action="store_true")

    def handle(self, *args, **options):
        path = Path(settings.BASE_DIR) / "docs" / "roles.md"
        text = render_markdown()
        if options["write"]:
            path.write_text(text)
            self.stdout.write(f"wrote {path}")
        elif options["check"]:
            if not path.exists() or path.read_text() != text:
                raise CommandError("docs/roles.md differs from apps/core/roles.py: run `manage.py roles_doc --write`")
            self.stdout.write("docs/roles.md is up to date")
        else:
            self.stdout.write(text)

from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_migrate


def _migrate_sim_database(sender: AppConfig, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """`manage.py migrate` also migrates the sim's own database when it is a separate one (SQLite), so the demo
    needs no second command. The test runner creates and migrates each test database itself."""
    from django.conf import settings
    from django.core.management import call_command

    from apps.clouds.sim.router import SIM_DB

    if using != DEFAULT_DB_ALIAS or settings.SKYPORT_SIM_SHARES_DATABASE or settings.TESTING:
        return
    call_command("migrate", database=SIM_DB, interactive=False, verbosity=0)


class SimCloudConfig(AppConfig):
    name = "apps.clouds.sim"
    label = "simcloud"
    verbose_name = "Simulated cloud"

    def ready(self) -> None:
        post_migrate.connect(_migrate_sim_database, sender=self, dispatch_uid="simcloud-migrate-sim-database")

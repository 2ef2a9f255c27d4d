"""Sends the simulated cloud's models to their own connection ("sim"): its writes commit on their own, so a
Skyport transaction that rolls back cannot un-create a sim server, exactly as with a real cloud."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS

SIM_DB = "sim"
SIM_APP = "simcloud"


class SimRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return SIM_DB if model._meta.app_label == SIM_APP else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return SIM_DB if model._meta.app_label == SIM_APP else None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        sim1, sim2 = obj1._meta.app_label == SIM_APP, obj2._meta.app_label == SIM_APP
        return None if sim1 == sim2 else False

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label == SIM_APP:
            # a shared PostgreSQL database is migrated once, through the default alias
            return db == SIM_DB or (db == DEFAULT_DB_ALIAS and settings.SKYPORT_SIM_SHARES_DATABASE)
        if db == SIM_DB:
            return False
        return None

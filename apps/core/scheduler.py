"""In-process scheduler for the embedded default: runs CELERY_BEAT_SCHEDULE in a daemon thread of the ASGI process,
so the demo's periodic work (membership expiry, later sync and the reconciler) happens without a beat process.

Production runs `celery beat` instead and leaves SKYPORT_INPROCESS_SCHEDULER off.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections

log = logging.getLogger(__name__)
_started = threading.Event()
_discovered = threading.Event()


def _interval(schedule: Any) -> float:
    if isinstance(schedule, int | float):
        return float(schedule)
    run_every = getattr(schedule, "run_every", None)  # celery.schedules.schedule
    if run_every is not None:
        return run_every.total_seconds()
    raise ValueError(f"the in-process scheduler supports fixed intervals only, not {schedule!r}")


def run_due(state: dict[str, float], now: float) -> list[str]:
    """Run every entry whose interval has elapsed; returns the names run. Separate from the loop for tests."""
    from portal.celery import app

    if not _discovered.is_set():
        # task autodiscovery is lazy (a worker triggers it at start-up): this process imports the tasks modules once
        app.autodiscover_tasks(force=True)
        for module in settings.CELERY_IMPORTS:  # task modules outside `<app>.tasks`
            importlib.import_module(module)
        _discovered.set()
    ran = []
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        interval = _interval(entry["schedule"])
        if now - state.get(name, 0.0) < interval:
            continue
        state[name] = now
        try:
            app.tasks[entry["task"]].apply(args=entry.get("args", ()), kwargs=entry.get("kwargs", {}))
        except Exception:
            log.exception("periodic task %s failed", name)
        finally:
            close_old_connections()
        ran.append(name)
    return ran


def _loop(tick: float) -> None:
    state: dict[str, float] = {}
    # first run after one tick: start-up stays fast
    now = time.monotonic()
    state.update({name: now for name in settings.CELERY_BEAT_SCHEDULE})
    while True:
        time.sleep(tick)
        run_due(state, time.monotonic())


def start(tick: float = 5.0) -> bool:
    if _started.is_set():
        return False
    _started.set()
    threading.Thread(target=_loop, args=(tick,), name="skyport-scheduler", daemon=True).start()
    log.info("in-process scheduler started (%d periodic tasks)", len(settings.CELERY_BEAT_SCHEDULE))
    return True

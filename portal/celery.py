import contextvars
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("skyport")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# --- the request id travels with the tasks a request queues, so a task's log lines carry it too -------------------
@signals.before_task_publish.connect
def _carry_request_id(headers: dict | None = None, **_: object) -> None:
    from apps.core.context import request_id_var

    rid = request_id_var.get()
    if rid and headers is not None:
        headers.setdefault("skyport_request_id", rid)


_task_tokens: dict[str, contextvars.Token[str]] = {}


@signals.task_prerun.connect
def _enter_request_id(task_id: str = "", task: object = None, **_: object) -> None:
    from apps.core.context import request_id_var

    request = getattr(task, "request", None)
    carried = getattr(request, "skyport_request_id", None) if request is not None else None
    if carried is None and request is not None:
        carried = (getattr(request, "headers", None) or {}).get("skyport_request_id")
    # an eager task runs inside the request: it keeps the request's id; a worker's task takes the carried one, or
    # its own task id when nothing queued it from a request (beat)
    rid = carried or request_id_var.get() or (task_id or "")[:16]
    _task_tokens[task_id] = request_id_var.set(rid)


@signals.task_postrun.connect
def _leave_request_id(task_id: str = "", **_: object) -> None:
    from apps.core.context import request_id_var

    token = _task_tokens.pop(task_id, None)
    if token is not None:
        request_id_var.reset(token)

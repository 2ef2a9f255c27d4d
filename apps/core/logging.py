"""Log lines that a log pipeline can read: the request id on every line (from the request, or carried into the
Celery task a request queued), JSON when LOG_JSON is on, and one access line per request."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from apps.core.context import request_id_var

# attributes a log call may add with `extra=` that the JSON line carries as fields
EXTRA_FIELDS = ("method", "path", "status", "duration_ms", "user_id", "task", "task_id")


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: UTC time with milliseconds, level, logger, request id, message, the known extra
    fields, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                payload[name] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)

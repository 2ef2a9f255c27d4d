"""CSV exports, streamed, with spreadsheet formulas neutralised."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.http import StreamingHttpResponse

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # a cell starting with = + - @ would run as a formula in a spreadsheet (CSV injection)
    return "'" + text if text.startswith(FORMULA_START) else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def stream_csv(filename: str, header: list[str], rows: Iterable[Iterable[Any]]) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([safe_cell(v) for v in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


AUDIT_CSV_HEADER = ["time", "organization", "project", "actor", "verb", "object_type", "object_id", "object",
                    "changes", "request_id", "ip"]


def audit_csv_rows(events: Any) -> Iterator[list[Any]]:
    for e in events.select_related("organization", "project").iterator(chunk_size=1000):
        yield [
            e.created_at.isoformat(), e.organization.slug, e.project.slug if e.project_id else "", e.actor_label,
            e.verb, e.object_type, e.object_id, e.object_label, json.dumps(e.changes, sort_keys=True),
            e.request_id, e.ip or "",
        ]


def audit_export_response(*, actor: Any, events: Any, organization_id: int | None) -> StreamingHttpResponse:
    """Stream the events as CSV and leave a trace that the export happened (the export is itself audited)."""
    from apps.core import audit

    org_ids = [organization_id] if organization_id else sorted(set(events.values_list("organization_id", flat=True)))
    for org_id in org_ids:
        audit.record(actor=actor, verb="audit.export", organization_id=org_id, object_type="audit_event",
                     object_label="CSV export")
    return stream_csv("skyport-audit.csv", AUDIT_CSV_HEADER, audit_csv_rows(events))

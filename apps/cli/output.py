"""How answers are printed. `-o json` and `-o yaml` print the API's objects unchanged (a list command prints the
list of every page's results), so scripts get what the API documents; `-o table` (the default) prints readable
columns chosen per command."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")
EMPTY = "-"


@dataclass(frozen=True)
class Column:
    """A table column: its header and how to get the cell's text from a row."""

    header: str
    value: Callable[[dict[str, Any]], Any]


def col(header: str, key: str) -> Column:
    return Column(header, lambda row: row.get(key))


def cell(value: Any) -> str:
    """A value as one line of text: lists joined, nothing as '-'."""
    if value is None or value == "" or value == []:
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    return " ".join(str(value).split())


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as aligned columns under upper-case headers (the last column is not padded)."""
    grid = [[c.header.upper() for c in columns]]
    grid.extend([cell(c.value(row)) for c in columns] for row in rows)
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    lines = []
    for line in grid:
        padded = [text.ljust(widths[i]) for i, text in enumerate(line[:-1])] + [line[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`label  value` lines, labels aligned; pairs whose value is None are left out."""
    shown = [(label, cell(value)) for label, value in pairs if value is not None]
    width = max((len(label) for label, _ in shown), default=0)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in shown)


def dump(data: Any, fmt: str) -> str:
    """The data as JSON or YAML text."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip("\n")
    raise ValueError(f"unknown format {fmt}")


def render(data: Any, fmt: str, as_table: Callable[[Any], str]) -> str:
    """What a command prints on stdout: the data itself for json/yaml, `as_table(data)` for table."""
    return as_table(data) if fmt == "table" else dump(data, fmt)


def money(value: Any, per: str = "") -> str | None:
    """A price string of the API ("0.01600") as "$0.01600" (None stays None: the price is unknown)."""
    if value is None or value == "":
        return None
    return f"${value}{per}"


def price_range(low: Any, high: Any) -> str | None:
    """"$0.016-0.020", or one price when both ends are equal."""
    if low is None and high is None:
        return None
    if low == high or high is None:
        return money(low)
    if low is None:
        return money(high)
    return f"${low}-{high}"


def short_time(value: Any) -> str | None:
    """"2026-12-16T11:03:14.123Z" → "2026-12-16 11:03Z" (minutes are enough on a screen)."""
    if not isinstance(value, str) or len(value) < 16 or "T" not in value:
        return value if value else None
    return value[:10] + " " + value[11:16] + "Z"


def mib(size: Any) -> str | None:
    if not isinstance(size, int):
        return None
    if size >= 1024**3:
        return f"{size / 1024**3:.1f} GiB"
    return f"{size / 1024**2:.1f} MiB"

"""`skyport catalog list`: what the token's user may launch, with prices."""

from __future__ import annotations

import argparse
from typing import Any

from apps.cli.commands.base import Command, Context, project_for
from apps.cli.output import Column, col, price_range, table

ITEM_COLUMNS = [
    col("id", "id"),
    col("slug", "slug"),
    col("name", "name"),
    col("kind", "kind"),
    Column("per hour", lambda i: price_range(i.get("price_hourly_min"), i.get("price_hourly_max"))),
    Column("per month", lambda i: price_range(i.get("price_monthly_min"), i.get("price_monthly_max"))),
    col("summary", "summary"),
]


def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", metavar="P", help="only what is published to this project (id, slug or name)")
    parser.add_argument("--search", metavar="TEXT", help="only items whose name, summary or description has TEXT")


def run_list(ctx: Context) -> int:
    query: dict[str, Any] = {"search": ctx.args.search}
    if ctx.args.project:
        query["project"] = project_for(ctx, ctx.args.project, "catalog.view", "browse the catalog")["id"]
    items = ctx.client().list("catalog-items/", query)
    ctx.emit(items, lambda rows: table(rows, ITEM_COLUMNS) if rows else "Nothing in the catalog for you.")
    return 0


COMMANDS = [
    Command(
        name="catalog list",
        help="list the catalog items you may launch",
        description="The catalog items published to your projects, with their price range per hour and per month "
        "(estimates over the clouds each can run on). Launch one with `skyport launch SLUG`.",
        examples="""\
  skyport catalog list
  skyport catalog list --project web --search debian
  skyport -o json catalog list | jq -r '.[].slug'""",
        calls=(("GET", "/api/v1/catalog-items/"), ("GET", "/api/v1/me/")),
        configure=_configure_list,
        run=run_list,
    ),
]

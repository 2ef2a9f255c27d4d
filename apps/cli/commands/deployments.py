"""`skyport launch` and `skyport deployments ...`: launching catalog items, looking at what runs, operating it and
following it live."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from apps.cli.commands.base import (
    DEFAULT_TIMEOUT,
    Command,
    Context,
    deployment_id,
    matches,
    parse_params,
    positive_int,
    project_for,
    seconds,
)
from apps.cli.errors import CliError, UsageError
from apps.cli.follow import GOALS, Tracker, WatchPrinter, wait_until, watch
from apps.cli.output import Column, col, dump, fields, money, short_time, table

STATES = ("requested", "pending_approval", "rejected", "vetoed", "provisioning", "active", "partially_failed",
          "deleting", "deleted", "cancelled")
POLICIES = ("cheapest", "ordered", "spread")

LIST_COLUMNS = [
    col("id", "id"),
    col("name", "name"),
    col("state", "state"),
    col("project", "project_name"),
    col("item", "catalog_item_name"),
    col("servers", "instance_count"),
    col("owner", "owner"),
    Column("per month", lambda d: money(d.get("estimated_monthly"))),
    Column("lease ends", lambda d: short_time(d.get("lease_expires_at"))),
]


def _size(instance: dict[str, Any]) -> str:
    ram = instance.get("ram_mb")
    shape = f" ({instance.get('vcpus')} vCPU, {ram / 1024:g} GiB)" if isinstance(ram, int) else ""
    return f"{instance.get('size') or '-'}{shape}"


INSTANCE_COLUMNS = [
    col("name", "name"),
    col("state", "state"),
    col("cloud", "account_name"),
    col("region", "region"),
    Column("size", _size),
    col("flavor", "flavor_id"),
    Column("addresses", lambda i: [*(i.get("public_ips") or []), *(i.get("private_ips") or [])]),
]


def detail_table(d: dict[str, Any]) -> str:
    """A deployment as `show` prints it: its facts, then its servers."""
    state = d.get("state", "")
    if d.get("state_message"):
        state += f" ({d['state_message']})"
    hourly, monthly = money(d.get("estimated_hourly"), "/h"), money(d.get("estimated_monthly"), "/month")
    lease = short_time(d.get("lease_expires_at"))
    if lease and d.get("lease_action"):
        lease += f", then {d['lease_action']}"
    head = fields([
        ("deployment", f"{d.get('name')} (id {d.get('id')})"),
        ("state", state),
        ("project", d.get("project_name")),
        ("item", d.get("catalog_item_name")),
        ("owner", d.get("owner")),
        ("placement", d.get("policy")),
        ("price", " = ".join(p for p in (hourly, monthly) if p) or None),
        ("lease ends", lease),
        ("approval", d.get("approval_state")),
        ("created", f"{short_time(d.get('created_at'))} by {d.get('created_by')}"),
        ("event", d.get("sequence")),
    ])
    instances = [i for i in d.get("instances") or [] if i.get("state") != "deleted"] or d.get("instances") or []
    if not instances:
        return head
    errors = [f"  {i.get('name')}: {i.get('error')}" for i in instances if i.get("error")]
    return "\n".join([head, "", table(instances, INSTANCE_COLUMNS), *(["", "errors:", *errors] if errors else [])])


def summary_line(d: dict[str, Any]) -> str:
    """One line for an action's answer: the deployment, its state, its servers' states."""
    servers = ", ".join(f"{i.get('name')} {i.get('state')}" for i in d.get("instances") or []
                        if i.get("state") != "deleted")
    return f"{d.get('name')} (id {d.get('id')})  {d.get('state')}" + (f"  [{servers}]" if servers else "")


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="follow it live until it is done (exit 1 if it fails)")
    parser.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"with --wait: give up after S seconds (default {DEFAULT_TIMEOUT:g}; exit 1)")


# --- launch -------------------------------------------------------------------------------------------------------
def _configure_launch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("item", metavar="ITEM", help="catalog item: id, slug or name (see `skyport catalog list`)")
    parser.add_argument("--name", required=True, help="name of the deployment (lowercase letters, digits, '-')")
    parser.add_argument("--project", metavar="P", help="project (id, slug or name); needed when you have several")
    parser.add_argument("--size", metavar="S", help="hardware profile slug (single-server items)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cloud", metavar="C", help="cloud account (id or name) granted to the project")
    where.add_argument("--policy", choices=POLICIES, help="where the servers go: cheapest (default), ordered, spread")
    parser.add_argument("--param", action="append", metavar="NAME=VALUE", help="a blueprint parameter (repeatable)")
    parser.add_argument("--ssh-key", metavar="K", help="one of your SSH keys (id or name)")
    parser.add_argument("--lease-days", type=positive_int, metavar="D", help="lease in days (default: the item's)")
    parser.add_argument("--idempotency-key", metavar="KEY",
                        help="repeat a launch that may have gone through: the same key never launches twice")
    _wait_options(parser)


def _item_ref(ctx: Context, value: str, project_id: int) -> int | str:
    """The catalog item's id when `value` names one by id, slug or name; else `value` itself, so that the API
    answers with its own message about it."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    items = ctx.client().list("catalog-items/", {"project": project_id, "search": text})
    found = [i for i in items if matches(text, i.get("slug"), i.get("name"))]
    return int(found[0]["id"]) if len(found) == 1 else text


def _cloud_ref(value: str | None) -> int | str | None:
    if value is None:
        return None
    text = value.strip()
    # an account's slug is its name in lower case with dashes
    return int(text) if text.isdigit() else "-".join(text.lower().split())


def run_launch(ctx: Context) -> int:
    params = parse_params(ctx.args.param)  # a malformed --param stops here, before any request
    project = project_for(ctx, ctx.args.project, "deployments.launch", "launch")
    body: dict[str, Any] = {
        "project": project["id"],
        "catalog_item": _item_ref(ctx, ctx.args.item, project["id"]),
        "name": ctx.args.name,
        "parameters": params,
    }
    optional = {"size": ctx.args.size, "cloud": _cloud_ref(ctx.args.cloud), "policy": ctx.args.policy,
                "ssh_key": ctx.args.ssh_key, "lease_days": ctx.args.lease_days}
    body.update({k: v for k, v in optional.items() if v is not None})
    key = ctx.args.idempotency_key or str(uuid.uuid4())
    try:
        created = ctx.client().request("POST", "deployments/", body=body, headers={"Idempotency-Key": key})
    except CliError as exc:
        exc.hints.append(f"  Idempotency-Key: {key} (to retry without launching twice: --idempotency-key {key})")
        raise
    # neutral words: with a repeated Idempotency-Key this is the deployment the first request made
    ctx.info(f"{created['name']} (deployment {created['id']}): {created['state']}.")
    if ctx.args.wait:
        created = wait_until(ctx.client(), created, GOALS["launch"], timeout=ctx.args.timeout,
                             progress=ctx.progress())
    ctx.emit(created, detail_table)
    return 0


# --- reading ------------------------------------------------------------------------------------------------------
def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", action="append", choices=STATES, metavar="S",
                        help=f"only this state (repeatable): {', '.join(STATES)}")
    parser.add_argument("--project", metavar="P", help="only this project (id, slug or name)")
    parser.add_argument("--mine", action="store_true", help="only the deployments you own")
    parser.add_argument("--search", metavar="TEXT", help="only names containing TEXT")


def run_list(ctx: Context) -> int:
    query: dict[str, Any] = {"state": ctx.args.state, "search": ctx.args.search}
    if ctx.args.project:
        query["project"] = project_for(ctx, ctx.args.project, "deployments.view", "see deployments")["id"]
    if ctx.args.mine:
        query["owner"] = ctx.me()["user"]["username"]
    rows = ctx.client().list("deployments/", query)
    ctx.emit(rows, lambda data: table(data, LIST_COLUMNS) if data else "No deployments.")
    return 0


def _configure_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="deployment id (or its name)")


def run_show(ctx: Context) -> int:
    detail = ctx.client().request("GET", f"deployments/{deployment_id(ctx, ctx.args.id)}/")
    ctx.emit(detail, detail_table)
    return 0


# --- operating ----------------------------------------------------------------------------------------------------
def _finish(ctx: Context, answer: dict[str, Any], goal: str) -> int:
    if ctx.args.wait:
        answer = wait_until(ctx.client(), answer, GOALS[goal], timeout=ctx.args.timeout, progress=ctx.progress())
    ctx.emit(answer, summary_line)
    return 0


def _lifecycle(action: str) -> Callable[[Context], int]:
    """The command function of start, stop, reboot or resize: one POST, then --wait if asked."""

    def run(ctx: Context) -> int:
        pk = deployment_id(ctx, ctx.args.id)
        body = {"size": ctx.args.size} if action == "resize" else {}
        answer = ctx.client().request("POST", f"deployments/{pk}/{action}/", body=body)
        return _finish(ctx, answer, action)

    return run


def _configure_action(parser: argparse.ArgumentParser) -> None:
    _configure_id(parser)
    _wait_options(parser)


def _configure_resize(parser: argparse.ArgumentParser) -> None:
    _configure_action(parser)
    parser.add_argument("--size", required=True, metavar="S", help="hardware profile slug to resize to")


def _configure_delete(parser: argparse.ArgumentParser) -> None:
    _configure_action(parser)
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def run_delete(ctx: Context) -> int:
    if not ctx.args.yes and not ctx.interactive:
        raise UsageError("refusing to delete without --yes: there is no terminal to confirm on")
    pk = deployment_id(ctx, ctx.args.id)
    if not ctx.args.yes:
        detail = ctx.client().request("GET", f"deployments/{pk}/")
        servers = len([i for i in detail.get("instances") or [] if i.get("state") != "deleted"])
        if not ctx.confirm(f"Delete {detail['name']} (deployment {pk}) and its {servers} server(s)?"):
            raise CliError("not confirmed: nothing was deleted")
    answer = ctx.client().request("DELETE", f"deployments/{pk}/")
    return _finish(ctx, answer, "delete")


def _configure_extend(parser: argparse.ArgumentParser) -> None:
    _configure_action(parser)
    parser.add_argument("--days", required=True, type=positive_int, metavar="D", help="the lease ends D days from now")


def run_extend(ctx: Context) -> int:
    pk = deployment_id(ctx, ctx.args.id)
    answer = ctx.client().request("POST", f"deployments/{pk}/extend/", body={"lease_days": ctx.args.days})
    # the new lease applies at once: there is nothing to wait for
    ctx.emit(answer, lambda d: f"{summary_line(d)}\nlease ends {short_time(d.get('lease_expires_at'))}, then "
             f"{d.get('lease_action') or 'nothing'}")
    return 0


# --- watching -----------------------------------------------------------------------------------------------------
def _event_text(tracker: Tracker, event: dict[str, Any]) -> str:
    kind, state = event.get("event"), event.get("state")
    subject = {
        "transition": f"{tracker.instance_name(event.get('instance'))}  {event.get('previous')} -> "
                      f"{event.get('instance_state')}",
        "operation": f"operation {event.get('operation')}",
        "sync": "checked at the provider",
        "approval": "approval",
    }.get(str(kind))
    after = f"deployment {state}" if subject is None else f"{subject}  (deployment {state})"
    return f"{time.strftime('%H:%M:%S')}  #{event.get('sequence')}  {after}"


def _servers(tracker: Tracker) -> str:
    return ", ".join(f"{i.get('name')} {i.get('state')}" for i in tracker.detail.get("instances") or []
                     if i.get("state") != "deleted") or "no servers"


def run_watch(ctx: Context) -> int:
    pk = deployment_id(ctx, ctx.args.id)
    detail = ctx.client().request("GET", f"deployments/{pk}/")
    structured = ctx.fmt != "table"

    def put(data: dict[str, Any], text: str) -> None:
        """json: one object per line; yaml: one document each; table: the readable line."""
        if structured:
            text = json.dumps(data) if ctx.fmt == "json" else "---\n" + dump(data, "yaml")
        ctx.stdout.write(text + "\n")
        ctx.stdout.flush()

    def on_resync(tracker: Tracker, why: str) -> None:
        data = {"type": "resync", "deployment": tracker.id, "sequence": tracker.sequence, "state": tracker.state,
                "reason": why}
        put(data, f"{time.strftime('%H:%M:%S')}  resync ({why}): {tracker.detail.get('name')} {tracker.state} at "
                  f"event {tracker.sequence}; {_servers(tracker)}")

    start = Tracker(detail)
    put({"type": "deployment", "deployment": start.id, "sequence": start.sequence, "state": start.state},
        f"{detail.get('name')} (deployment {pk}): {start.state} at event {start.sequence}; {_servers(start)}")
    printer = WatchPrinter(event=lambda t, e: put(e, _event_text(t, e)), resync=on_resync, note=ctx.info)
    watch(ctx.client(), detail, printer)
    ctx.info(f"{detail.get('name')} (deployment {pk}) is deleted.")
    return 0


ID_CALLS = (("GET", "/api/v1/deployments/"),)  # a name given for ID is looked up
WAIT_CALLS = (("GET", "/api/v1/deployments/{id}/"), ("WS", "/ws/deployments/"))


def _action_command(action: str, help_text: str, description: str) -> Command:
    return Command(
        name=f"deployments {action}",
        help=help_text,
        description=f"{description} The servers change in the background: --wait follows them live until they "
        "are done (exit 1 if one fails or the timeout passes).",
        examples=f"""\
  skyport deployments {action} 42
  skyport deployments {action} shop --wait""",
        calls=(("POST", f"/api/v1/deployments/{{id}}/{action}/"), *ID_CALLS, *WAIT_CALLS),
        configure=_configure_action,
        run=_lifecycle(action),
    )


COMMANDS = [
    Command(
        name="launch",
        help="launch a catalog item",
        description="Launch a catalog item in one of your projects. Everything is checked before anything "
        "happens: a refused launch reserves nothing. Each launch sends a fresh Idempotency-Key, printed when "
        "something goes wrong: run the same command again with --idempotency-key KEY and it cannot launch twice. "
        "--wait follows the deployment live until every server runs (exit 1 if it fails or the timeout passes).",
        examples="""\
  skyport launch debian-12-server --name my-box --project web --wait
  skyport launch two-tier-web-application --name shop --project web --param web_count=2 --lease-days 14
  skyport launch "Debian 12 server" --name tmp --project web --cloud sim-west --size medium
  skyport -o json launch debian-12-server --name ci-1 --project web --wait | jq '.instances[].public_ips'""",
        calls=(("GET", "/api/v1/me/"), ("GET", "/api/v1/catalog-items/"), ("POST", "/api/v1/deployments/"),
               *WAIT_CALLS),
        configure=_configure_launch,
        run=run_launch,
    ),
    Command(
        name="deployments list",
        help="list deployments",
        description="The deployments you can see, newest first.",
        examples="""\
  skyport deployments list --mine
  skyport deployments list --state active --state partially_failed --project web
  skyport -o json deployments list | jq -r '.[] | select(.state == "active") | .name'""",
        calls=(("GET", "/api/v1/deployments/"), ("GET", "/api/v1/me/")),
        configure=_configure_list,
        run=run_list,
    ),
    Command(
        name="deployments show",
        help="show a deployment and its servers",
        description="A deployment with its servers: state, cloud, region, size and addresses. -o json shows "
        "everything the API says, placement reasons included.",
        examples="""\
  skyport deployments show 42
  skyport deployments show shop
  skyport -o json deployments show 42 | jq '.placement'""",
        calls=(("GET", "/api/v1/deployments/{id}/"), *ID_CALLS),
        configure=_configure_id,
        run=run_show,
    ),
    _action_command("start", "start the stopped servers", "Start the stopped servers of a deployment."),
    _action_command("stop", "stop the running servers", "Stop the running servers of a deployment."),
    _action_command("reboot", "reboot the running servers", "Reboot the running servers of a deployment."),
    Command(
        name="deployments resize",
        help="resize the servers to another hardware profile",
        description="Resize the running and stopped servers to another hardware profile (the quota is checked for "
        "what it adds). --wait follows them live until they are done.",
        examples="""\
  skyport deployments resize 42 --size medium --wait""",
        calls=(("POST", "/api/v1/deployments/{id}/resize/"), *ID_CALLS, *WAIT_CALLS),
        configure=_configure_resize,
        run=_lifecycle("resize"),
    ),
    Command(
        name="deployments delete",
        help="delete a deployment and its servers",
        description="Delete every server of a deployment. Asks for confirmation on a terminal; without a terminal "
        "(a script, a pipe) it refuses unless --yes is given (exit 2). --wait follows it until it is deleted.",
        examples="""\
  skyport deployments delete 42
  skyport deployments delete shop --yes --wait""",
        calls=(("DELETE", "/api/v1/deployments/{id}/"), *ID_CALLS, *WAIT_CALLS),
        configure=_configure_delete,
        run=run_delete,
    ),
    Command(
        name="deployments extend",
        help="set the lease to end D days from now",
        description="Set the deployment's lease to end D days from now (within the catalog item's limit). It "
        "applies at once: --wait has nothing to wait for.",
        examples="""\
  skyport deployments extend 42 --days 30""",
        calls=(("POST", "/api/v1/deployments/{id}/extend/"), *ID_CALLS),
        configure=_configure_extend,
        run=run_extend,
    ),
    Command(
        name="deployments watch",
        help="follow a deployment's live events",
        description="Print each live event of a deployment as it happens (over the /ws/deployments/ websocket), "
        "until it is deleted (exit 0) or Ctrl-C (exit 130). When the connection drops it reconnects (1 s, "
        "doubling to 30 s); after a reconnect or a gap in the event numbers it reads the deployment again and "
        "prints a resync line. -o json prints one JSON object per line.",
        examples="""\
  skyport deployments watch 42
  skyport -o json deployments watch 42 | jq -c 'select(.type == "deployment.event")'""",
        calls=(("GET", "/api/v1/deployments/{id}/"), ("WS", "/ws/deployments/"), *ID_CALLS),
        configure=_configure_id,
        run=run_watch,
    ),
]

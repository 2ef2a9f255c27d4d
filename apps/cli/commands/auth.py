"""`skyport login` and `skyport logout`: checking a token and keeping it in the configuration file."""

from __future__ import annotations

import argparse
from typing import Any

from apps.cli import config
from apps.cli.commands.base import Command, Context
from apps.cli.errors import ApiError, UsageError
from apps.cli.output import fields, short_time


def _configure_login(parser: argparse.ArgumentParser) -> None:
    """--url and --token are the global options: login reads them, or asks."""


def _who(me: dict[str, Any]) -> list[tuple[str, Any]]:
    token = me.get("token") or {}
    orgs = ", ".join(o.get("name", "") for o in me.get("organizations") or [])
    return [
        ("user", (me.get("user") or {}).get("username")),
        ("organisation", orgs),
        ("token", f"{token.get('name')} ({token.get('scope')})" if token else None),
        ("expires", short_time(token.get("expires_at")) if token else None),
        ("projects", ", ".join(p.get("slug", "") for p in me.get("projects") or [])),
    ]


def run_login(ctx: Context) -> int:
    path = config.config_path(ctx.environ)
    saved = config.load(path)["profiles"].get(ctx.profile) or {}
    url = ctx.args.url or ctx.environ.get("SKYPORT_URL")
    if not url:
        default = saved.get("url") or ""
        answer = ctx.ask(f"Skyport URL{f' [{default}]' if default else ''}: ")
        url = answer or default
    if not url:
        raise UsageError("give the address of Skyport with --url (e.g. https://skyport.example.com)")
    url = config.normalize_url(url)
    token = ctx.args.token or ctx.environ.get("SKYPORT_TOKEN")
    if not token:
        token = ctx.ask("API token (create one under API tokens in the portal): ", secret=True)
    token = token.strip()
    if not token:
        raise UsageError("an API token is needed: create one under API tokens in the portal")
    client = ctx.make_client(url, token)
    try:
        me = client.request("GET", "me/")
    except ApiError as exc:
        if exc.status == 401:
            exc.hints.append("  check the token (it is shown once, when it is created) or create a new one")
        raise
    config.store_login(path, ctx.profile, url, token)
    ctx.emit(me, lambda data: f"Logged in to {url}\n{fields(_who(data))}")
    ctx.info(f"Saved to {path} (profile {ctx.profile}).")
    return 0


def run_logout(ctx: Context) -> int:
    path = config.config_path(ctx.environ)
    removed = config.forget_login(path, ctx.profile)
    if removed is None:
        ctx.info(f"Not logged in (no profile {ctx.profile} in {path}).")
        return 0
    result = {"profile": ctx.profile, "url": removed.get("url"), "config": str(path)}
    ctx.emit(result, lambda data: f"Logged out of {data['url']} (profile {data['profile']}).")
    ctx.info("The token itself still works until it expires: revoke it under API tokens in the portal if it "
             "should stop.")
    return 0


COMMANDS = [
    Command(
        name="login",
        help="check an API token and save it",
        description="Check an API token against Skyport (GET /api/v1/me/) and save the URL and the token in "
        "$XDG_CONFIG_HOME/skyport/config.json (~/.config/skyport/config.json), readable by you only. What is "
        "not given on the command line (--url, --token) or in SKYPORT_URL/SKYPORT_TOKEN is asked for; the token "
        "is read without echo. Create the token under API tokens in the portal, with scope write to change things.",
        examples="""\
  skyport login --url https://skyport.example.com          # asks for the token
  skyport --profile lab login --url http://127.0.0.1:8000   # a second server or organisation
  SKYPORT_TOKEN=sky_... skyport login --url https://skyport.example.com""",
        calls=(("GET", "/api/v1/me/"),),
        configure=_configure_login,
        run=run_login,
    ),
    Command(
        name="logout",
        help="forget the saved login",
        description="Remove the profile's URL and token from the configuration file. The token itself stays valid "
        "until it expires or is revoked in the portal.",
        examples="""\
  skyport logout
  skyport --profile lab logout""",
        calls=(),
        configure=lambda parser: None,
        run=run_logout,
    ),
]

"""What every command is made of: its name, help, examples, the API calls it makes (the parity table the tests
check against the server's OpenAPI schema), its arguments and its function; and the context it runs in (the
client, the output format, the streams, the signed-in user)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from apps.cli import config
from apps.cli.client import Client
from apps.cli.errors import CliError, UsageError
from apps.cli.output import render
from apps.cli.progress import ProgressLine

Call = tuple[str, str]  # (method, path template as in the OpenAPI schema); method WS for the websocket
DEFAULT_TIMEOUT = 600.0  # seconds a --wait waits unless --timeout says otherwise


@dataclass(frozen=True)
class Command:
    name: str  # "deployments stop"
    help: str  # one line, in the parent's list of commands
    description: str
    examples: str  # the EXAMPLES section of --help
    calls: tuple[Call, ...]
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context], int]
    server_url_option: bool = True  # False where --url means something else (images import --url SOURCE)


@dataclass
class Context:
    """One run of one command."""

    command: Command
    args: argparse.Namespace
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    environ: Mapping[str, str] = field(default_factory=dict)
    _client: Client | None = None
    _me: dict[str, Any] | None = None

    @property
    def fmt(self) -> str:
        return str(getattr(self.args, "output", None) or "table")

    @property
    def quiet(self) -> bool:
        return bool(getattr(self.args, "quiet", False))

    @property
    def interactive(self) -> bool:
        return self.stdin.isatty()

    @property
    def profile(self) -> str:
        return config.profile_name(getattr(self.args, "profile", None), self.environ)

    def client(self) -> Client:
        if self._client is None:
            login = config.resolve(url=getattr(self.args, "url", None), token=getattr(self.args, "token", None),
                                   profile=self.profile, path=config.config_path(self.environ),
                                   environ=self.environ)
            self._client = self.make_client(login.url, login.token)
        return self._client

    def make_client(self, url: str, token: str) -> Client:
        return Client(url, token, command=self.command.name, trace=self.environ.get("SKYPORT_TRACE") or "")

    def me(self) -> dict[str, Any]:
        """GET me/ once per run: the user, the token's organisation, the projects and what may be done in each."""
        if self._me is None:
            self._me = self.client().request("GET", "me/")
        return self._me

    # --- printing ---------------------------------------------------------------------------------------------
    def emit(self, data: Any, as_table: Callable[[Any], str]) -> None:
        text = render(data, self.fmt, as_table)
        if text:
            self.stdout.write(text + "\n")
            self.stdout.flush()

    def info(self, text: str) -> None:
        """A message for the person (stderr, so stdout stays parseable); -q silences it."""
        if not self.quiet:
            self.stderr.write(text + "\n")
            self.stderr.flush()

    def progress(self) -> ProgressLine:
        return ProgressLine(self.stderr, quiet=self.quiet)

    # --- asking -----------------------------------------------------------------------------------------------
    def ask(self, prompt: str, *, secret: bool = False) -> str:
        if not self.interactive:
            raise UsageError(f"{prompt.rstrip(': ')} is needed and there is no terminal to ask on")
        if secret:
            return getpass.getpass(prompt, stream=self.stderr)
        self.stderr.write(prompt)
        self.stderr.flush()
        line = self.stdin.readline()
        if not line:
            raise UsageError("no answer (end of input)")
        return line.strip()

    def confirm(self, question: str) -> bool:
        return self.ask(f"{question} [y/N] ").lower() in ("y", "yes")


# --- looking things up --------------------------------------------------------------------------------------------
def matches(value: str, *candidates: Any) -> bool:
    """`value` names this object: its id, or its slug/name/username ignoring case."""
    wanted = value.strip().casefold()
    return any(c is not None and str(c).casefold() == wanted for c in candidates)


def project_for(ctx: Context, value: str | None, action: str, what: str) -> dict[str, Any]:
    """The project `value` names (id, slug or name) among the token's, where `action` is allowed. Without a
    value: the only such project, else a usage error listing them."""
    projects = ctx.me().get("projects") or []
    allowed = [p for p in projects if action in (p.get("actions") or [])]
    if value is None:
        if len(allowed) == 1:
            return allowed[0]
        names = ", ".join(p["slug"] for p in allowed) or "none"
        raise UsageError(f"choose the project to {what} in with --project (yours: {names})")
    found = [p for p in projects if matches(value, p.get("id"), p.get("slug"), p.get("name"))]
    if not found:
        names = ", ".join(p["slug"] for p in projects) or "none"
        raise CliError(f"no project '{value}' is reachable with this token (yours: {names})")
    if found[0] not in allowed:
        raise CliError(f"you may not {what} in project {found[0]['name']} ({action} is not among your rights there)")
    return found[0]


def deployment_id(ctx: Context, value: str) -> int:
    """A deployment's id from an id or a name (the live deployment of that name, else the newest one)."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    found = [d for d in ctx.client().list("deployments/", {"search": text}) if matches(text, d.get("name"))]
    live = [d for d in found if d.get("state") not in ("deleted", "cancelled", "rejected", "vetoed")]
    pick = live or found
    if not pick:
        raise CliError(f"no deployment called '{text}' is visible with this token")
    if len(live) > 1:
        ids = ", ".join(str(d["id"]) for d in live)
        raise CliError(f"several deployments are called '{text}' ({ids}): give the id")
    return int(pick[0]["id"])


def parse_params(items: list[str] | None) -> dict[str, str]:
    """--param k=v ... as a dict. Values stay text: the server reads them as each parameter's type."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--param needs NAME=VALUE, not '{item}'")
        if key in params:
            raise UsageError(f"--param {key} is given twice")
        params[key] = value
    return params


# --- argument types -----------------------------------------------------------------------------------------------
def seconds(value: str) -> float:
    """--timeout: a positive number of seconds (argparse turns the error into a usage error, exit 2)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{value}'") from None
    if not number > 0:
        raise argparse.ArgumentTypeError("the timeout must be more than 0 seconds")
    return number


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not '{value}'")
    return int(value)

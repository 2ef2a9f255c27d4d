"""The `skyport` command: argparse over the command table (apps.cli.commands), global options accepted before or
after the command, and one place that turns every failure into a message and an exit code:

    0    done
    1    the API refused (its message and field errors are printed), the server cannot be reached, or a --wait
         ended in failure or timed out
    2    usage: a wrong command line, a malformed --param, no saved login, a delete without --yes off a terminal
    130  interrupted (Ctrl-C)

Never a traceback (SKYPORT_DEBUG=1 shows one for an unexpected error), never the token."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

from apps.cli import version
from apps.cli.commands import COMMANDS
from apps.cli.commands.base import Command, Context
from apps.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, ApiError, CliError
from apps.cli.output import FORMATS

PROG = "skyport"
GROUPS = {
    "catalog": "browse the catalog",
    "deployments": "look at, operate and follow deployments",
    "images": "list, import and push images",
}
EXIT_CODES = """\
exit codes:
  0    done
  1    the API refused, the server cannot be reached, or a --wait failed or timed out
  2    usage error (including a malformed --param and a missing login)
  130  interrupted (Ctrl-C)"""
EXAMPLES = """\
examples:
  skyport login --url https://skyport.example.com
  skyport catalog list
  skyport launch debian-12-server --name my-box --project web --wait
  skyport deployments list --mine
  skyport -o json deployments show my-box | jq '.instances[].public_ips'
  skyport deployments watch my-box

Run `skyport COMMAND --help` for a command's options and examples.

"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(os.get_terminal_size(2).columns, 110)
                         if sys.stderr.isatty() else 110)


def _global_options(*, server_url: bool, top: bool) -> argparse.ArgumentParser:
    """The options every command takes. Below the top level their defaults are SUPPRESS, so that an option given
    before the command is not reset by the command's parser."""
    parent = argparse.ArgumentParser(add_help=False)
    default: Any = None if top else argparse.SUPPRESS
    options = parent.add_argument_group("global options")
    options.add_argument("-o", "--output", choices=FORMATS, default=default,
                         help="table (default), or the API's objects as json or yaml")
    if server_url:
        options.add_argument("--url", default=default, help="Skyport's address (else SKYPORT_URL, else the saved one)")
    options.add_argument("--token", default=default,
                         help="API token (else SKYPORT_TOKEN, else the saved one; prefer those: a command line "
                         "is visible to other users of the machine)")
    options.add_argument("--profile", default=default, metavar="NAME",
                         help="saved login to use (else SKYPORT_PROFILE, else 'default')")
    options.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                         help="no progress lines or notes on stderr")
    return parent


def _add_command(subparsers: Any, command: Command, name: str) -> None:
    parser = subparsers.add_parser(
        name, help=command.help, description=textwrap.fill(command.description, width=100),
        epilog=f"examples:\n{command.examples}",
        formatter_class=_Formatter, parents=[_global_options(server_url=command.server_url_option, top=False)],
    )
    command.configure(parser)
    parser.set_defaults(_command=command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Skyport from the command line: launch catalog items, operate and follow "
        "deployments, import and push images.\nIt talks to the REST API and the live-events websocket with an "
        "API token.",
        epilog=f"{EXAMPLES}{EXIT_CODES}", formatter_class=_Formatter,
        parents=[_global_options(server_url=True, top=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for command in COMMANDS:
        group, _, name = command.name.partition(" ")
        if not name:
            _add_command(commands, command, group)
            continue
        if group not in groups:
            group_parser = commands.add_parser(group, help=GROUPS[group], description=GROUPS[group].capitalize() + ".",
                                               formatter_class=_Formatter)
            group_parser.set_defaults(_group=group_parser)
            groups[group] = group_parser.add_subparsers(title="commands", metavar="COMMAND")
        _add_command(groups[group], command, name)
    return parser


def _print_error(stderr: TextIO, exc: CliError) -> None:
    first, *rest = exc.lines()
    stderr.write(f"{PROG}: error: {first}\n")
    for line in rest:
        stderr.write(line + "\n")
    stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and argparse's usage errors (2)
        return int(exc.code or 0)
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        (getattr(args, "_group", None) or parser).print_help(sys.stderr)
        return EXIT_USAGE
    context = Context(command=command, args=args, environ=os.environ)
    try:
        return command.run(context)
    except ApiError as exc:
        if exc.status == 404:
            exc.hints.insert(0, "  it does not exist, or this token cannot see it (a token reaches one organisation)")
        _print_error(sys.stderr, exc)
        return exc.exit_code
    except CliError as exc:
        _print_error(sys.stderr, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`| head`): say nothing more, and do not let the interpreter complain on exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception as exc:
        if os.environ.get("SKYPORT_DEBUG"):
            raise
        _print_error(sys.stderr, CliError(f"unexpected {type(exc).__name__}: {exc}",
                                          hints=["  run again with SKYPORT_DEBUG=1 to see where"]))
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())

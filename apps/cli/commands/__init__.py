"""Every command of the client, and the table of the API calls each makes (`API_CALLS`): the tests run every
command against a live server and check that table against what each really called and against the OpenAPI
schema, so the client and the API cannot drift apart unnoticed."""

from __future__ import annotations

from apps.cli.commands import auth, catalog, deployments, images
from apps.cli.commands.base import Call, Command

COMMANDS: list[Command] = [*auth.COMMANDS, *catalog.COMMANDS, *deployments.COMMANDS, *images.COMMANDS]
API_CALLS: dict[str, tuple[Call, ...]] = {command.name: command.calls for command in COMMANDS}

"""What can go wrong, as exceptions that carry their exit code: the entry point turns each into one message on
stderr and that code, never a traceback."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1  # the API refused, the server cannot be reached, a wait failed or timed out
EXIT_USAGE = 2  # the command line is wrong or incomplete: nothing was asked of the server
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class CliError(Exception):
    """An error the user can act on. `hints` are printed on their own lines after the message."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hints: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hints = list(hints or [])

    def lines(self) -> list[str]:
        return [self.message, *self.hints]


class UsageError(CliError):
    """A command line that cannot work (a malformed --param, no saved login): exit 2, like argparse's errors."""

    exit_code = EXIT_USAGE


class Unreachable(CliError):
    """The server did not answer at all (refused, timed out, DNS, TLS)."""


class ApiError(CliError):
    """The API answered with an error envelope: {"error": {"code", "message", "fields", "request_id"}}."""

    def __init__(self, status: int, code: str, message: str, *, fields: dict[str, Any] | None = None,
                 request_id: str = "", hints: list[str] | None = None) -> None:
        super().__init__(message, hints=hints)
        self.status = status
        self.code = code
        self.fields = fields or {}
        self.request_id = request_id

    @classmethod
    def from_body(cls, status: int, body: Any, fallback: str) -> ApiError:
        """The error of an answer: the envelope when there is one, else `fallback` (a proxy's HTML page, say)."""
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(status, f"http_{status}", fallback)
        fields = error.get("fields")
        return cls(status, str(error.get("code") or f"http_{status}"), str(error.get("message") or fallback),
                   fields=fields if isinstance(fields, dict) else None, request_id=str(error.get("request_id") or ""))

    def lines(self) -> list[str]:
        out = [self.message]
        for name, problem in field_problems(self.fields):
            out.append(f"  {problem}" if name in ("", "non_field_errors") else f"  {name}: {problem}")
        out.extend(self.hints)
        if self.request_id:
            out.append(f"  (request id {self.request_id})")
        return out


def field_problems(fields: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(field, problem) pairs of a `fields` object, nested ones named like `targets[1].region`."""
    if isinstance(fields, dict):
        pairs: list[tuple[str, str]] = []
        for key, value in fields.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            pairs.extend(field_problems(value, name))
        return pairs
    if isinstance(fields, list):
        if all(isinstance(item, str) for item in fields):
            return [(prefix, item) for item in fields]
        pairs = []
        for index, item in enumerate(fields):
            if item:
                pairs.extend(field_problems(item, f"{prefix}[{index}]"))
        return pairs
    return [(prefix, str(fields))]

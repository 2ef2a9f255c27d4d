"""Where the client keeps its login: `$XDG_CONFIG_HOME/skyport/config.json` (else `~/.config/skyport/config.json`),
one entry per profile. The file holds an API token, so it is private to its owner (0600 in a 0700 directory) and is
replaced atomically: a crash or a second `skyport login` never leaves half a file behind.

The URL and token come, in this order, from the command line (`--url`, `--token`), the environment (`SKYPORT_URL`,
`SKYPORT_TOKEN`) and the profile in the file (`--profile`, `SKYPORT_PROFILE`, else `default`)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps.cli.errors import CliError, UsageError

DEFAULT_PROFILE = "default"
FILE_MODE = 0o600
DIR_MODE = 0o700


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "skyport" / "config.json"


def normalize_url(url: str) -> str:
    """The server's root URL from what people paste: with or without a trailing slash or `/api/v1/`."""
    text = url.strip().rstrip("/")
    for suffix in ("/api/v1", "/api"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if not text.startswith(("http://", "https://")):
        raise UsageError(f"the URL must start with http:// or https://, not '{url.strip()}'")
    return text


def load(path: Path) -> dict[str, Any]:
    """The file's content ({"profiles": {name: {"url", "token"}}}), empty when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"profiles": {}}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise CliError(f"{path} is not valid JSON: fix it or remove it and run `skyport login` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles", {}), dict):
        raise CliError(f"{path} is not a skyport configuration: remove it and run `skyport login` again")
    data.setdefault("profiles", {})
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    """Write the file atomically, readable by its owner only (a token is a password)."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path.parent, DIR_MODE)
    handle, temporary = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, FILE_MODE)
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def store_login(path: Path, profile: str, url: str, token: str) -> None:
    data = load(path)
    data["profiles"][profile] = {"url": url, "token": token}
    save(path, data)


def forget_login(path: Path, profile: str) -> dict[str, Any] | None:
    """Remove a profile; the file goes when it was the last one. Returns what was removed."""
    data = load(path)
    removed = data["profiles"].pop(profile, None)
    if removed is None:
        return None
    if data["profiles"]:
        save(path, data)
    else:
        path.unlink(missing_ok=True)
    return removed if isinstance(removed, dict) else {}


@dataclass(frozen=True)
class Login:
    """Where to send requests and with which token, and where each came from (for messages)."""

    url: str
    token: str
    profile: str


def profile_name(flag: str | None, environ: Mapping[str, str]) -> str:
    return flag or environ.get("SKYPORT_PROFILE") or DEFAULT_PROFILE


def resolve(*, url: str | None, token: str | None, profile: str, path: Path,
            environ: Mapping[str, str]) -> Login:
    """The URL and token to use: flags first, then SKYPORT_URL/SKYPORT_TOKEN, then the saved profile."""
    saved: dict[str, Any] = {}
    if not (url and token):
        entry = load(path)["profiles"].get(profile)
        saved = entry if isinstance(entry, dict) else {}
    found_url = url or environ.get("SKYPORT_URL") or saved.get("url")
    found_token = token or environ.get("SKYPORT_TOKEN") or saved.get("token")
    if not found_url or not found_token:
        where = "" if profile == DEFAULT_PROFILE else f" --profile {profile}"
        raise UsageError(f"not logged in: run `skyport login{where}` first (or set SKYPORT_URL and SKYPORT_TOKEN)")
    return Login(url=normalize_url(str(found_url)), token=str(found_token).strip(), profile=profile)

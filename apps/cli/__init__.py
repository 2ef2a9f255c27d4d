"""`skyport`: the command-line client of Skyport. It talks to the REST API and the live-events websocket only, so it
runs anywhere Python and the network reach the portal; it never imports Django or touches a database."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    try:
        return metadata.version("skyport")
    except metadata.PackageNotFoundError:
        return "0.1.0"

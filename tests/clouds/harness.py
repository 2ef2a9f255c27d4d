"""What the contract suite needs from each driver under test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from apps.clouds.drivers.base import CloudDriver, Server, ServerState


@dataclass
class Harness:
    kind: str
    driver: CloudDriver
    image_id: str
    size_id: str
    other_size_id: str  # a different size the server can be resized to
    network_id: str | None
    # wait(server_id, states) → the server once it is in one of `states`: sim advances its clock, moto answers at
    # once, OpenStack polls in real time; raises AssertionError with the last state seen when it never gets there
    wait: Callable[[str, set[ServerState]], Server]
    # the same endpoint and region with a wrong secret: validate_credentials() must raise AuthError
    bad_credentials_driver: CloudDriver

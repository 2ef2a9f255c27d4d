"""Making and steering simulated clouds: the demo seed, account tests and the contract suite use these. Every write
goes through the sim's own connection (the router), so it commits whatever Skyport's transaction does."""

from __future__ import annotations

import datetime
import hashlib
from decimal import Decimal
from typing import Any

from django.db import transaction

from apps.clouds.sim.models import SimCloud, SimFault, SimServer
from apps.clouds.sim.router import SIM_DB

DEFAULT_SIZES: list[dict[str, Any]] = [
    {"id": "small", "name": "small", "vcpus": 1, "ram_mb": 2048, "disk_gb": 20, "price_per_hour": "0.0200"},
    {"id": "medium", "name": "medium", "vcpus": 2, "ram_mb": 4096, "disk_gb": 40, "price_per_hour": "0.0400"},
    {"id": "large", "name": "large", "vcpus": 4, "ram_mb": 8192, "disk_gb": 80, "price_per_hour": "0.0800"},
    {"id": "xlarge", "name": "xlarge", "vcpus": 8, "ram_mb": 16384, "disk_gb": 160, "price_per_hour": "0.1600"},
]
DEFAULT_IMAGES: list[dict[str, Any]] = [
    {"id": "ubuntu-24.04", "name": "Ubuntu 24.04 LTS", "os": "ubuntu", "min_disk_gb": 10},
    {"id": "ubuntu-22.04", "name": "Ubuntu 22.04 LTS", "os": "ubuntu", "min_disk_gb": 10},
    {"id": "debian-12", "name": "Debian 12", "os": "debian", "min_disk_gb": 8},
    {"id": "rocky-9", "name": "Rocky Linux 9", "os": "rocky", "min_disk_gb": 10},
]
DEFAULT_NETWORKS: list[dict[str, Any]] = [
    {"id": "net-private", "name": "private", "cidr": "10.20.0.0/16", "is_external": False},
    {"id": "net-public", "name": "public", "cidr": "203.0.113.0/24", "is_external": True},
]
DEFAULT_QUOTAS = {"instances": 50, "vcpus": 200, "ram_mb": 400 * 1024}
DEFAULT_DURATIONS = {"build": 30, "stop": 10, "start": 15, "reboot": 20, "resize": 40, "delete": 10}
# tests freeze the clock here, far from the wall clock so no test can lean on it
FROZEN_EPOCH = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def api_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def sim_cloud_create(
    endpoint: str,
    *,
    api_key: str,
    seed: int = 0,
    regions: list[str] | None = None,
    sizes: list[dict[str, Any]] | None = None,
    price_factor: Decimal | str = "1",
    images: list[dict[str, Any]] | None = None,
    networks: list[dict[str, Any]] | None = None,
    quotas: dict[str, int] | None = None,
    capacity: dict[str, int] | None = None,
    durations: dict[str, float] | None = None,
    frozen_clock: bool = False,
) -> SimCloud:
    """A simulated cloud at `endpoint` (replaced if it exists). `price_factor` scales the default prices, so two
    demo clouds can differ; `capacity` is vCPUs per region (default: plenty); `frozen_clock` for tests (time moves
    only through `sim_advance`), otherwise the clock follows the wall clock."""
    regions = regions or ["region-1", "region-2"]
    factor = Decimal(str(price_factor))
    priced = []
    for size in sizes if sizes is not None else DEFAULT_SIZES:
        price = size.get("price_per_hour")
        priced.append({**size, "price_per_hour": None if price is None else str(Decimal(str(price)) * factor)})
    with transaction.atomic(using=SIM_DB):
        SimCloud.objects.filter(endpoint=endpoint).delete()
        return SimCloud.objects.create(
            endpoint=endpoint,
            seed=seed,
            api_key_hash=api_key_hash(api_key),
            regions=regions,
            sizes=priced,
            images=images if images is not None else DEFAULT_IMAGES,
            networks=networks if networks is not None else DEFAULT_NETWORKS,
            quotas={**DEFAULT_QUOTAS, **(quotas or {})},
            capacity={region: 1000 for region in regions} | (capacity or {}),
            durations={**DEFAULT_DURATIONS, **(durations or {})},
            clock_frozen_at=FROZEN_EPOCH if frozen_clock else None,
        )


def sim_cloud(endpoint: str) -> SimCloud:
    return SimCloud.objects.get(endpoint=endpoint)


def sim_advance(endpoint: str, seconds: float) -> datetime.datetime:
    """Move the sim's clock forward; transitions that end by then are seen as ended on the next call."""
    with transaction.atomic(using=SIM_DB):
        cloud = SimCloud.objects.select_for_update().get(endpoint=endpoint)
        cloud.clock_offset += seconds
        cloud.save(update_fields=["clock_offset"])
    return cloud.now()


def sim_fault_add(endpoint: str, *, kind: str, method: str = "*", **fields: Any) -> SimFault:
    """Inject a fault, e.g. `sim_fault_add(ep, kind="error", method="create_server", error="capacity", on_call=1)`,
    `kind="throttle", rate=0.3`, `kind="latency", seconds=12`, `kind="die", seconds=60`, `kind="stuck"`."""
    if kind not in SimFault.Kind.values:
        raise ValueError(f"unknown sim fault kind {kind!r}")
    with transaction.atomic(using=SIM_DB):
        cloud = sim_cloud(endpoint)
        fault = SimFault.objects.create(cloud=cloud, kind=kind, method=method, **fields)
        # on the cloud's row, in the same transaction: a call waiting for that row's lock sees it once it gets it
        SimCloud.objects.filter(pk=cloud.pk).update(faults_possible=True)
    return fault


def sim_faults_clear(endpoint: str) -> int:
    return SimFault.objects.filter(cloud__endpoint=endpoint).update(is_active=False)


def sim_server_kill(endpoint: str, server_id: str, *, reason: str = "host failure") -> None:
    """The server dies now (→ error), as when its hypervisor fails."""
    cloud = sim_cloud(endpoint)
    SimServer.objects.filter(cloud=cloud, server_id=server_id).update(dies_at=cloud.now(), fault=reason)


def sim_call_count(endpoint: str, method: str | None = None) -> int:
    cloud = sim_cloud(endpoint)
    return cloud.calls if method is None else int(cloud.call_counts.get(method, 0))


def sim_servers(endpoint: str) -> list[SimServer]:
    """Every server ever created in the sim cloud, deleted ones included (for tests and the demo)."""
    return list(SimServer.objects.filter(cloud__endpoint=endpoint))

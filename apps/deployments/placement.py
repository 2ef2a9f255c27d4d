"""Where servers go: the candidate account-regions for one server kind, every rejected cloud with its reason, and
the placement policies (a chosen account, cheapest, ordered fallback, spread for high availability).

A candidate passes the same `can_launch` as the access review (live grant covering the region, the user's role,
account active and not failing), has an available copy of the (approved) image, and a flavor that fits the
hardware profile and the image's architecture (`apps.catalog.profiles`). Quota and capacity are the launch's
checks: quota before placement (apps.deployments.quotas), capacity by the provider at create time (the `ordered`
policy then falls back to the next candidate).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from apps.accounts.models import Project, User
from apps.catalog.models import HardwareProfile, Image, image_usable_by_project
from apps.catalog.profiles import LaunchWorld, cheapest, launch_world
from apps.clouds.models import CloudAccount, Flavor
from apps.clouds.selectors import can_launch
from apps.core.permissions import ServiceError


@dataclass(frozen=True)
class Candidate:
    account: CloudAccount
    region: str
    flavor: Flavor
    price_per_hour: Decimal | None
    provider_image_id: str

    @property
    def where(self) -> str:
        return f"{self.account.name}/{self.region}"


@dataclass(frozen=True)
class Rejection:
    where: str
    reason: str


def placement_candidates(
    *, user: User, project: Project, image: Image, profile: HardwareProfile, world: LaunchWorld | None = None
) -> tuple[list[Candidate], list[Rejection]]:
    """The account-regions one server of `image` on `profile` may go to, cheapest first, and every other
    account-region of the organisation with why not. `world` (from `launch_world` for `project` and `image`) is
    the launch check's read of accounts, grants, flavors and copies, reused rather than read again."""
    if not image_usable_by_project(image, project.pk):
        raise ServiceError(f"{image} is not approved for {project.name}: a security admin must approve it and it "
                           f"must belong to or be shared with the project.")
    if world is None or not world.serves(project, image):
        world = launch_world(project, image)
    copies, grants = world.copies, world.grants
    fits = {(f.account.pk, f.region): f for f in world.mapping(profile, granted_only=False)}
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    for fit in cheapest(fits.values()) + [f for f in fits.values() if f.flavor is None]:
        where = f"{fit.account.name}/{fit.region}"
        decision = can_launch(user, fit.account, fit.region, project, grants=grants)
        if not decision:
            rejections.append(Rejection(where, decision.reason))
        elif (fit.account.pk, fit.region) not in copies:
            rejections.append(Rejection(where, f"no approved copy of {image} (push it there first)"))
        elif fit.flavor is None:
            rejections.append(Rejection(where, fit.reason or f"no flavor fits {profile.name}"))
        else:
            candidates.append(Candidate(fit.account, fit.region, fit.flavor, fit.price_per_hour,
                                        copies[(fit.account.pk, fit.region)]))
    return candidates, sorted(rejections, key=lambda r: r.where)


def place(
    candidates: list[Candidate],
    *,
    count: int,
    policy: str,
    account_id: int | None = None,
    spread: str = "accounts",
) -> list[Candidate]:
    """One candidate per server (`count` of them). `account`: the cheapest region of that account; `cheapest` and
    `ordered`: the first candidate (ordered keeps the rest as fallbacks, see `fallbacks`); `spread`: round-robin
    over distinct accounts (or account-regions), cheapest first, so consecutive servers land apart."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if policy == "account":
        pool = [c for c in candidates if c.account.pk == account_id]
        if not pool:
            raise ServiceError("This cloud account cannot take this server: see the reasons for each cloud.")
        return [pool[0]] * count
    if not candidates:
        raise ServiceError("No cloud can take this server: see the reasons for each cloud.")
    if policy in ("cheapest", "ordered"):
        return [candidates[0]] * count
    if policy == "spread":
        seen: set[object] = set()
        distinct = []
        for c in candidates:
            key = c.account.pk if spread == "accounts" else (c.account.pk, c.region)
            if key not in seen:
                seen.add(key)
                distinct.append(c)
        return [distinct[i % len(distinct)] for i in range(count)]
    raise ValueError(f"unknown placement policy {policy!r}")


def fallbacks(candidates: list[Candidate], chosen: Candidate) -> list[Candidate]:
    """For the `ordered` policy: where to try next when the provider refuses (capacity, error), in order."""
    return [c for c in candidates if (c.account.pk, c.region) != (chosen.account.pk, chosen.region)]

"""Deployments API routes for the generated isolation walk (keyword arguments of tests.test_route_walk.Route), the
Acme rows the API walks on top of `tests.deployments.walk_pages.deployments_world`, and the samples of
tests/api/test_isolation.py for the deployments API's router entries.

- `ROUTES`: every route of the deployments API (walked, none excluded).
- `api_world(mark, world)`: adds the rows only the API points at (a hook delivery, a provider operation of the
  deployment's instance) to the deployments world; `API_MODELS` are their tenant models not in DEPLOYMENT_MODELS.
- `isolation_samples()`: basename → (model, factory(ctx), create payload a viewer may not use, PATCH payload).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apps.clouds.models import CloudAccount, Operation
from apps.deployments.models import Approval, Deployment, Hook, HookDelivery, Instance, Quota

API_MODELS = (Operation,)

ROUTES: dict[str, dict[str, Any]] = {
    # deployments: members see their project's, write needs deployments.operate (the viewer gets 403)
    "api:deployment-list": dict(methods=("get", "post"), allowed="connor", shows_marker=True),
    "api:deployment-detail": dict(obj="deployment", methods=("get", "delete"), allowed="connor", shows_marker=True),
    "api:deployment-bulk": dict(methods=("post",), allowed="connor"),
    **{f"api:deployment-{name}": dict(obj="deployment", methods=("post",), allowed="connor")
       for name in ("start", "stop", "reboot", "resize", "delete", "resync", "extend", "transfer", "retry", "cancel")},
    # instances
    "api:instance-list": dict(allowed="connor", shows_marker=True),
    "api:instance-detail": dict(obj="instance", allowed="connor", shows_marker=True),
    **{f"api:instance-{name}": dict(obj="instance", methods=("post",), allowed="connor")
       for name in ("start", "stop", "reboot", "resize", "delete", "resync", "console")},
    # quotas: everybody sees those that apply to them (a quota has no text to carry the marker)
    "api:quota-list": dict(methods=("get", "post"), allowed="connor"),
    "api:quota-detail": dict(obj="quota", methods=("get", "patch", "delete"), allowed="connor"),
    # hooks: hooks.manage only (org admins)
    "api:hook-list": dict(methods=("get", "post"), allowed="sam", shows_marker=True),
    "api:hook-detail": dict(obj="hook", methods=("get", "patch", "delete"), allowed="sam", shows_marker=True),
    "api:hook-test": dict(obj="hook", methods=("post",), allowed="sam"),
    "api:hook-delivery-list": dict(allowed="sam", shows_marker=True),
    "api:hook-delivery-detail": dict(obj="hook_delivery", allowed="sam", shows_marker=True),
    # approvals: approvers see the organisation's, requesters their own
    "api:approval-list": dict(allowed="sam", shows_marker=True),
    "api:approval-detail": dict(obj="approval", allowed="sam", shows_marker=True),
    "api:approval-approve": dict(obj="approval", methods=("post",), allowed="sam"),
    "api:approval-reject": dict(obj="approval", methods=("post",), allowed="sam"),
    # provider operations of the deployments' servers
    "api:operation-list": dict(allowed="connor", shows_marker=True),
    "api:operation-detail": dict(obj="operation", allowed="connor", shows_marker=True),
}


def api_world(mark: str, world: dict[str, Any]) -> dict[str, Any]:
    """The rows only API routes point at, next to `deployments_world`'s: its hook's delivery and a finished create
    operation of its instance (rows only: nothing reaches a provider)."""
    low = mark.lower()
    deployment, instance = world["deployment"], world["instance"]
    delivery = HookDelivery.objects.all_tenants().filter(hook=world["hook"]).order_by("pk").first()
    operation = Operation.objects.create(
        organization_id=deployment.organization_id, project_id=deployment.project_id, account_id=instance.account_id,
        region=instance.region, kind="create_server", idempotency_key=f"{low}-op", state=Operation.State.SUCCEEDED,
        params={"instance_id": instance.pk, "deployment_id": deployment.pk, "server_id": f"{low}-server",
                "user_data": f"#cloud-config {mark}", "public_key": "ssh-ed25519 AAAA walk"},
        steps=["create", "wait_running"], step=2, result={"server_id": f"{low}-server"},
    )
    return {"hook_delivery": delivery, "operation": operation}


# --- tests/api/test_isolation.py -------------------------------------------------------------------------------
def _world(ctx: dict[str, Any]) -> dict[str, Any]:
    """The deployments world of one isolation test (built once per test: ctx is per test)."""
    if "_deployments" not in ctx:
        from tests.deployments.walk_pages import deployments_world

        account = CloudAccount(organization=ctx["acme"], name="Acme iso deployments", slug="iso-deployments",
                               kind="sim", regions=["region-1"], default_region="region-1")
        account.set_credentials({"api_key": "iso-deployments-key-1234"}, secret_field="api_key")
        account.save()
        world = deployments_world("Acme", ctx["acme"], ctx["web"], account, ctx["connor"])
        ctx["_deployments"] = {**world, **api_world("Acme", world)}
    return ctx["_deployments"]


def _row(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda ctx: _world(ctx)[key]


def isolation_samples() -> dict[str, tuple[Any, Any, Any, Any]]:
    """Entries of tests/api/test_isolation.py's SAMPLES. Launching is covered by tests/deployments/test_api.py and
    the route walk (a viewer's launch needs a launchable catalog item to reach the 403)."""
    return {
        "deployment": (Deployment, _row("deployment"), None, {"name": "hacked"}),
        "instance": (Instance, _row("instance"), None, {"name": "hacked"}),
        "quota": (Quota, _row("quota"), lambda ctx: {"project": ctx["web"].pk, "max_vcpus": 1000},
                  {"max_vcpus": 1000}),
        "hook": (Hook, _row("hook"), lambda ctx: {
            "organization": ctx["acme"].pk, "name": "Mine", "url": "https://hooks.example/mine",
            "phase": "after_launch", "secret": "viewer-secret-0123456789",
        }, {"name": "Hacked"}),
        "hook-delivery": (HookDelivery, _row("hook_delivery"), None, {"message": "x"}),
        "approval": (Approval, _row("approval"), None, {"state": "approved"}),
        "operation": (Operation, _row("operation"), None, {"state": "failed"}),
    }

"""/ws/deployments/ through the real ASGI application (origin check, session/token auth, routing, consumer) and the
configured channel layer: numbered deployment events reach the people allowed to see them, once, and nobody else."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client
from django.utils import timezone

from apps.accounts import services as account_services
from apps.accounts.models import ApiToken, Membership, User
from apps.core.events import user_group
from apps.core.ws_auth import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from apps.deployments import consumers
from apps.deployments.models import Deployment, Instance, InstanceTransition
from apps.deployments.states import DeploymentState, InstanceState
from apps.deployments.transitions import transition
from portal.asgi import application
from tests.catalog.test_profiles import make_account
from tests.ws.test_notifications import (
    ORIGIN,
    QUIET,
    WAIT,
    committed,
    expect_close,
    new_token,
    open_socket,
    run_async,
    session_cookie,
    token_header,
)

pytestmark = pytest.mark.django_db(transaction=True)
PATH = "/ws/deployments/"
S = InstanceState
NOT_FOUND = "not found"


@dataclasses.dataclass
class World:
    web: Deployment  # Acme / web
    web_server: Instance
    data: Deployment  # Acme / data
    data_server: Instance
    ops: Deployment  # Globex / ops
    ops_server: Instance


def make_deployment(project, owner, account, name: str) -> tuple[Deployment, Instance]:
    deployment = Deployment.objects.create(organization_id=project.organization_id, project=project, owner=owner,
                                           name=name, state=DeploymentState.PROVISIONING)
    instance = Instance.objects.create(
        organization_id=project.organization_id, project=project, deployment=deployment, owner=owner,
        name=f"{name}-web-1", role="web", index=1, account=account, region="region-1", size="small",
        flavor_id="s1", vcpus=1, ram_mb=2048, disk_gb=20, price_per_hour=Decimal("0.02"), state=S.PENDING,
    )
    return deployment, instance


@pytest.fixture
def world(acme, globex, web, data, ops, connor, mallory) -> World:
    acme_cloud, globex_cloud = make_account(acme, "sim-acme"), make_account(globex, "sim-globex")
    return World(*make_deployment(web, connor, acme_cloud, "shop"), *make_deployment(data, connor, acme_cloud, "etl"),
                 *make_deployment(ops, mallory, globex_cloud, "ci"))


async def move(instance: Instance, to: str) -> None:
    """An instance changes state in a transaction that commits, as the reconciler or an operation does."""
    await committed(transition, instance=instance, to=to, cause=InstanceTransition.Cause.PROVIDER)


def event(deployment: Deployment, instance: Instance, *, sequence: int, to: str, previous: str,
          state: str = DeploymentState.PROVISIONING) -> dict:
    return {
        "type": "deployment.event", "deployment": deployment.pk, "project": deployment.project_id,
        "sequence": sequence, "event": "transition", "state": state, "instance": instance.pk,
        "instance_state": to, "previous": previous, "operation": None,
    }


async def opened(user: User | None = None, *, headers=None, subprotocols=None) -> WebsocketCommunicator:
    if headers is None:
        headers = [ORIGIN, await session_cookie(user)]
    state, hello, comm = await open_socket(headers, path=PATH, subprotocols=subprotocols)
    assert (state, hello) == ("open", {"type": "hello"})
    return comm


async def watch(comm: WebsocketCommunicator, deployment_id) -> dict:
    await comm.send_json_to({"type": "watch", "deployment": deployment_id})
    return await comm.receive_json_from(timeout=WAIT)


async def ping(comm: WebsocketCommunicator) -> dict:
    await comm.send_json_to({"type": "ping"})
    return await comm.receive_json_from(timeout=WAIT)


async def silent(*comms: WebsocketCommunicator) -> bool:
    return all([await comm.receive_nothing(timeout=QUIET) for comm in comms])


async def close_all(*comms: WebsocketCommunicator) -> None:
    for comm in comms:
        await comm.disconnect()


# --- authentication -----------------------------------------------------------------------------------------------
@run_async
async def test_session_socket_receives_the_event_of_a_transition(connor, world):
    comm = await opened(connor)
    await move(world.web_server, S.BUILDING)
    assert await comm.receive_json_from(timeout=WAIT) == event(world.web, world.web_server, sequence=1,
                                                               to=S.BUILDING, previous=S.PENDING)
    await close_all(comm)


@run_async
async def test_token_in_the_header_receives_events_without_origin(connor, acme, world):
    _, secret = await database_sync_to_async(new_token)(connor, acme)
    comm = await opened(headers=[token_header(secret)])
    await move(world.data_server, S.BUILDING)
    assert await comm.receive_json_from(timeout=WAIT) == event(world.data, world.data_server, sequence=1,
                                                               to=S.BUILDING, previous=S.PENDING)
    await close_all(comm)


@run_async
async def test_token_as_subprotocol_receives_events(vera, acme, world):
    _, secret = await database_sync_to_async(new_token)(vera, acme)
    comm = WebsocketCommunicator(application, PATH, headers=[ORIGIN],
                                 subprotocols=["skyport.v1", f"skyport.token.{secret}"])
    connected, subprotocol = await comm.connect(timeout=WAIT)
    assert (connected, subprotocol) == (True, "skyport.v1")  # the secret is never echoed back
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "hello"}
    await move(world.web_server, S.BUILDING)
    assert (await comm.receive_json_from(timeout=WAIT))["sequence"] == 1
    await close_all(comm)


@run_async
async def test_anonymous_socket_is_closed_with_4401(world):
    state, code, _ = await open_socket([ORIGIN], path=PATH)
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_token_in_the_query_string_is_refused(connor, acme, world):
    _, secret = await database_sync_to_async(new_token)(connor, acme)
    state, code, _ = await open_socket([], path=f"{PATH}?token={secret}")
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_foreign_origin_is_refused(connor, acme, world):
    _, secret = await database_sync_to_async(new_token)(connor, acme)
    for headers in ([(b"origin", b"https://evil.example"), await session_cookie(connor)],
                    [(b"origin", b"https://evil.example"), token_header(secret)]):
        state, _, _ = await open_socket(headers, path=PATH)
        assert state == "denied"


@run_async
async def test_user_who_may_see_no_deployment_is_closed_with_4403(world):
    nobody = await database_sync_to_async(User.objects.create_user)(username="nobody", password="x" * 20)
    state, code, _ = await open_socket([ORIGIN, await session_cookie(nobody)], path=PATH)
    assert (state, code) == ("closed", CLOSE_FORBIDDEN)


# --- who receives what --------------------------------------------------------------------------------------------
@run_async
async def test_outsider_receives_nothing_of_acme(mallory, world):
    comm = await opened(mallory)  # admin of Globex: her own organisation's socket opens
    await move(world.web_server, S.BUILDING)
    await move(world.data_server, S.BUILDING)
    await move(world.ops_server, S.BUILDING)
    # the first thing she receives is her own organisation's event: nothing of Acme came before it
    assert await comm.receive_json_from(timeout=WAIT) == event(world.ops, world.ops_server, sequence=1,
                                                               to=S.BUILDING, previous=S.PENDING)
    assert await silent(comm)
    await close_all(comm)


@run_async
async def test_viewer_of_one_project_receives_nothing_of_another(vera, world):
    comm = await opened(vera)  # viewer in web only
    await move(world.data_server, S.BUILDING)
    await move(world.web_server, S.BUILDING)
    assert (await comm.receive_json_from(timeout=WAIT))["deployment"] == world.web.pk
    assert await silent(comm)
    await close_all(comm)


@run_async
async def test_org_roles_receive_the_whole_organisation_members_only_their_projects(
    sam, marty, sarah, connor, vera, world
):
    org_roles = [await opened(user) for user in (sam, marty, sarah)]
    connors, veras = await opened(connor), await opened(vera)

    await move(world.data_server, S.BUILDING)
    for comm in (*org_roles, connors):
        assert (await comm.receive_json_from(timeout=WAIT))["project"] == world.data.project_id
    await move(world.web_server, S.BUILDING)
    for comm in (*org_roles, connors, veras):
        assert (await comm.receive_json_from(timeout=WAIT))["project"] == world.web.project_id
    assert await silent(*org_roles, connors, veras)  # each event once, and vera never had data's
    await close_all(*org_roles, connors, veras)


@run_async
async def test_token_reaches_only_its_organisation(connor, acme, globex, world):
    await committed(account_services.membership_create, actor=None, user=connor, organization=globex,
                    role="manager")
    _, secret = await database_sync_to_async(new_token)(connor, acme)
    by_token = await opened(headers=[token_header(secret)])
    by_session = await opened(connor)

    await move(world.ops_server, S.BUILDING)
    assert (await by_session.receive_json_from(timeout=WAIT))["deployment"] == world.ops.pk
    assert await silent(by_token)
    assert await watch(by_token, world.ops.pk) == {"type": "error", "deployment": world.ops.pk, "error": NOT_FOUND}
    await move(world.web_server, S.BUILDING)
    assert (await by_token.receive_json_from(timeout=WAIT))["deployment"] == world.web.pk
    await close_all(by_token, by_session)


@run_async
async def test_rolled_back_transition_is_never_sent(connor, world):
    comm = await opened(connor)

    @database_sync_to_async
    def move_then_roll_back():
        with pytest.raises(RuntimeError), transaction.atomic():
            transition(world.web_server, to=S.BUILDING, cause=InstanceTransition.Cause.PROVIDER)
            raise RuntimeError("the write failed")

    await move_then_roll_back()
    assert await silent(comm)
    await close_all(comm)


# --- watching one deployment --------------------------------------------------------------------------------------
@run_async
async def test_watch_answers_with_the_current_sequence_and_each_event_arrives_once(connor, world):
    await move(world.web_server, S.BUILDING)
    comm = await opened(connor)
    assert await watch(comm, world.web.pk) == {"type": "watching", "deployment": world.web.pk, "sequence": 1,
                                               "state": DeploymentState.PROVISIONING}
    await move(world.web_server, S.RUNNING)
    # the socket is in the project's group and the deployment's: the event still arrives once
    assert await comm.receive_json_from(timeout=WAIT) == event(world.web, world.web_server, sequence=2,
                                                               to=S.RUNNING, previous=S.BUILDING,
                                                               state=DeploymentState.ACTIVE)
    assert await silent(comm)
    await close_all(comm)


@run_async
async def test_watch_of_a_foreign_or_missing_deployment_gets_the_same_answer(vera, mallory, world):
    missing = world.ops.pk + 1000
    veras, mallorys = await opened(vera), await opened(mallory)
    assert await watch(veras, world.data.pk) == {"type": "error", "deployment": world.data.pk, "error": NOT_FOUND}
    assert await watch(veras, missing) == {"type": "error", "deployment": missing, "error": NOT_FOUND}
    assert await watch(mallorys, world.web.pk) == {"type": "error", "deployment": world.web.pk, "error": NOT_FOUND}
    for junk in ("abc", -3, True, None, {"id": 1}):
        answer = await watch(veras, junk)
        assert (answer["type"], answer["error"]) == ("error", NOT_FOUND), junk

    await move(world.data_server, S.BUILDING)
    await move(world.web_server, S.BUILDING)
    assert (await veras.receive_json_from(timeout=WAIT))["deployment"] == world.web.pk
    assert await silent(veras, mallorys)
    await close_all(veras, mallorys)


@run_async
async def test_sequence_numbers_increase_by_one_so_a_missed_event_shows(connor, world):
    comm = await opened(connor)
    for to in (S.BUILDING, S.RUNNING, S.STOPPING):
        await move(world.web_server, to)
    received = [(await comm.receive_json_from(timeout=WAIT))["sequence"] for _ in range(3)]
    assert received == [1, 2, 3]
    await comm.disconnect()

    await move(world.web_server, S.STOPPED)  # nobody listening: number 4 is missed
    comm = await opened(connor)
    watching = await watch(comm, world.web.pk)
    assert watching["sequence"] == 4  # not 3 + 0: the client knows to fetch the deployment again
    await move(world.web_server, S.STARTING)
    assert (await comm.receive_json_from(timeout=WAIT))["sequence"] == 5
    await close_all(comm)


@run_async
async def test_unwatch_and_the_watch_limit(connor, world, monkeypatch):
    monkeypatch.setattr(consumers, "MAX_WATCHED", 1)
    comm = await opened(connor)
    assert (await watch(comm, world.web.pk))["type"] == "watching"
    refused = await watch(comm, world.data.pk)
    assert (refused["type"], refused["deployment"]) == ("error", world.data.pk)
    assert "at most 1" in refused["error"]
    await comm.send_json_to({"type": "unwatch", "deployment": world.web.pk})
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "unwatched", "deployment": world.web.pk}
    assert (await watch(comm, world.data.pk))["type"] == "watching"
    await close_all(comm)


@run_async
async def test_watching_marks_the_deployment_watched(connor, world):
    presence = pytest.importorskip("apps.deployments.presence")
    comm = await opened(connor)
    await watch(comm, world.web.pk)
    assert await database_sync_to_async(presence.watched)([world.web.pk, world.data.pk]) == {world.web.pk}
    assert await ping(comm) == {"type": "pong"}
    await close_all(comm)


# --- access that changes, sessions and tokens that end ------------------------------------------------------------
@run_async
async def test_new_role_joins_the_new_project(sam, vera, acme, data, world):
    comm = await opened(vera)
    await committed(account_services.membership_create, actor=sam, user=vera, organization=acme, project=data,
                    role="viewer")
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "access.changed"}
    await move(world.data_server, S.BUILDING)
    assert (await comm.receive_json_from(timeout=WAIT))["deployment"] == world.data.pk
    await close_all(comm)


@run_async
async def test_watched_deployment_no_longer_visible_is_dropped(connor, web, world):
    comm = await opened(connor)
    await watch(comm, world.web.pk)
    # connor's role in web runs out; the change is announced to his sockets
    await database_sync_to_async(
        lambda: Membership._base_manager.filter(user=connor, project=web).update(expires_at=timezone.now())
    )()
    await get_channel_layer().group_send(user_group(connor.pk), {"type": "access.changed"})
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "error", "deployment": world.web.pk,
                                                          "error": NOT_FOUND}
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "access.changed"}
    await move(world.web_server, S.BUILDING)
    await move(world.data_server, S.BUILDING)
    assert (await comm.receive_json_from(timeout=WAIT))["deployment"] == world.data.pk  # data is still his
    assert await silent(comm)
    await close_all(comm)


@run_async
async def test_logout_ends_the_socket_at_once(connor, world):
    cookie = await session_cookie(connor)
    comm = await opened(headers=[ORIGIN, cookie])
    assert await ping(comm) == {"type": "pong"}

    @database_sync_to_async
    def sign_out():
        browser = Client()
        name, _, key = cookie[1].decode().partition("=")
        browser.cookies[name] = key
        assert browser.post("/accounts/logout/").status_code == 302

    await sign_out()
    # pushed by the sign-out itself, not found at the next ping
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "session.ended", "reason": "signed out"}
    await expect_close(comm, CLOSE_FORBIDDEN)
    state, code, _ = await open_socket([ORIGIN, cookie], path=PATH)
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_membership_removal_closes_the_socket(sam, connor, web, world):
    comm = await opened(connor)
    membership = await database_sync_to_async(lambda: Membership.objects.all_tenants().get(user=connor, project=web))()
    await committed(account_services.membership_remove, actor=sam, membership=membership)
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "session.ended", "reason": "access changed"}
    await expect_close(comm, CLOSE_FORBIDDEN)
    await move(world.data_server, S.BUILDING)  # nothing more reaches the closed socket
    assert await silent(comm)


@run_async
async def test_token_revocation_closes_only_that_tokens_socket(connor, acme, world):
    token, secret = await database_sync_to_async(new_token)(connor, acme)
    _, other_secret = await database_sync_to_async(new_token)(connor, acme)
    revoked, other = await opened(headers=[token_header(secret)]), await opened(headers=[token_header(other_secret)])
    await committed(account_services.token_revoke, actor=connor, token=token)
    assert await revoked.receive_json_from(timeout=WAIT) == {"type": "session.ended", "reason": "token revoked"}
    await expect_close(revoked, CLOSE_FORBIDDEN)
    assert await ping(other) == {"type": "pong"}
    await close_all(other)


@run_async
async def test_expired_token_ends_the_socket_at_its_next_ping(connor, acme, world):
    token, secret = await database_sync_to_async(new_token)(connor, acme)
    comm = await opened(headers=[token_header(secret)])
    await database_sync_to_async(
        lambda: ApiToken._base_manager.filter(pk=token.pk).update(expires_at=timezone.now())
    )()
    assert await ping(comm) == {"type": "session.ended", "reason": "signed out"}
    await expect_close(comm, CLOSE_FORBIDDEN)


@run_async
async def test_notifications_on_the_user_group_leave_the_socket_alone(connor, acme, world):
    comm = await opened(connor)
    await committed(account_services.notification_send, recipient=connor, organization_id=acme.pk, text="hi")
    assert await silent(comm)  # that socket's business
    assert await ping(comm) == {"type": "pong"}
    await comm.send_json_to({"type": "launch-everything"})
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "error", "error": "unknown message type"}
    await close_all(comm)


"""Live notifications over /ws/notifications/, through the real ASGI application (origin check,
session/token auth, routing, consumer) and the configured channel layer (in-memory by default, Redis when
REDIS_URL is set)."""

from __future__ import annotations

import datetime
import functools
import json

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import transaction
from django.test import Client
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import ApiToken, Membership, Notification, User
from apps.core.ws_auth import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from portal.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/notifications/"
ORIGIN = (b"origin", b"http://testserver")
WAIT = 3  # seconds for a message that must arrive (Redis layer included)
QUIET = 0.3  # seconds of silence that stand for "nothing arrives"


def run_async(fn):
    """Run an async test body on one event loop; database work inside goes through database_sync_to_async."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return async_to_sync(fn)(*args, **kwargs)

    return wrapper


@database_sync_to_async
def session_cookie(user: User) -> tuple[bytes, bytes]:
    """A real signed-in session, as the browser holds it after the login page."""
    client = Client()
    client.force_login(user)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={key}".encode())


def token_header(secret: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Token {secret}".encode())


def new_token(user: User, organization) -> tuple[ApiToken, str]:
    return services.token_create(actor=user, organization=organization, name="cli", scope=ApiToken.Scope.READ)


async def open_socket(headers, path=PATH, subprotocols=None):
    """Connect and read the first message: ("open", hello, comm), ("closed", code, comm) when authentication
    refused it, ("denied", code, comm) when the origin check refused the handshake."""
    comm = WebsocketCommunicator(application, path, headers=headers, subprotocols=subprotocols)
    connected, code = await comm.connect(timeout=WAIT)
    if not connected:
        return "denied", code, comm
    first = await comm.receive_output(timeout=WAIT)
    if first["type"] == "websocket.close":
        return "closed", first.get("code"), comm
    assert first["type"] == "websocket.send"
    return "open", json.loads(first["text"]), comm


async def expect_close(comm, code):
    message = await comm.receive_output(timeout=WAIT)
    assert message == {"type": "websocket.close", "code": code}


@database_sync_to_async
def committed(fn, /, **kwargs):
    """Call a service in a transaction that commits, as a view would; live events go out on commit."""
    with transaction.atomic():
        return fn(**kwargs)


# --- session authentication ---------------------------------------------------------------------------------
@run_async
async def test_session_socket_receives_a_committed_notification(sam, acme):
    state, hello, comm = await open_socket([ORIGIN, await session_cookie(sam)])
    assert state == "open"
    assert hello == {"type": "hello", "unread": 0}

    note = await committed(services.notification_send, recipient=sam, organization_id=acme.pk,
                           text="Build web-42 finished", level="success", link="/deployments/42/")
    message = await comm.receive_json_from(timeout=WAIT)
    assert message == {
        "type": "notification.new", "id": note.pk, "text": "Build web-42 finished", "level": "success",
        "link": "/deployments/42/", "unread": 1,
    }

    await committed(services.notification_mark_read, user=sam)
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "notification.read", "unread": 0}
    await comm.disconnect()


@run_async
async def test_rolled_back_notification_is_never_delivered(sam, acme):
    state, _, comm = await open_socket([ORIGIN, await session_cookie(sam)])
    assert state == "open"

    @database_sync_to_async
    def send_then_roll_back():
        with pytest.raises(RuntimeError), transaction.atomic():
            services.notification_send(recipient=sam, organization_id=acme.pk, text="never")
            raise RuntimeError("the write failed")

    await send_then_roll_back()
    assert await comm.receive_nothing(timeout=QUIET)
    assert await database_sync_to_async(Notification.objects.all_tenants().count)() == 0
    await comm.disconnect()


@run_async
async def test_notifications_reach_only_their_recipient(sam, connor, acme):
    _, _, sams = await open_socket([ORIGIN, await session_cookie(sam)])
    state, _, connors = await open_socket([ORIGIN, await session_cookie(connor)])
    assert state == "open"

    await committed(services.notification_send, recipient=sam, organization_id=acme.pk, text="for sam")
    assert (await sams.receive_json_from(timeout=WAIT))["text"] == "for sam"
    assert await connors.receive_nothing(timeout=QUIET)
    await sams.disconnect()
    await connors.disconnect()


@run_async
async def test_ended_session_refuses_the_socket(connor):
    cookie = await session_cookie(connor)
    await database_sync_to_async(
        lambda: User.objects.filter(pk=connor.pk).update(session_epoch=connor.session_epoch + 1)
    )()
    state, code, _ = await open_socket([ORIGIN, cookie])
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_anonymous_socket_is_closed_with_4401():
    state, code, _ = await open_socket([ORIGIN])
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_session_cookie_without_origin_is_not_enough(sam):
    # browsers always send Origin; a cookie-only handshake without it is not a browser and must use a token
    state, code, _ = await open_socket([await session_cookie(sam)])
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_foreign_origin_is_refused_before_authentication(sam, acme):
    _, secret = await database_sync_to_async(new_token)(sam, acme)
    for headers in (
        [(b"origin", b"https://evil.example"), await session_cookie(sam)],
        [(b"origin", b"https://evil.example"), token_header(secret)],
        [(b"origin", b"null"), await session_cookie(sam)],
    ):
        state, _, _ = await open_socket(headers)
        assert state == "denied"


# --- token authentication -----------------------------------------------------------------------------------
@run_async
async def test_token_in_header_without_origin_works(connor, acme):
    token, secret = await database_sync_to_async(new_token)(connor, acme)
    state, hello, comm = await open_socket([token_header(secret)])
    assert state == "open"
    assert hello["type"] == "hello"

    await committed(services.notification_send, recipient=connor, organization_id=acme.pk, text="launched")
    assert (await comm.receive_json_from(timeout=WAIT))["text"] == "launched"
    await comm.disconnect()


@run_async
async def test_token_as_subprotocol_for_browsers(connor, acme):
    _, secret = await database_sync_to_async(new_token)(connor, acme)
    comm = WebsocketCommunicator(
        application, PATH, headers=[ORIGIN], subprotocols=["skyport.v1", f"skyport.token.{secret}"]
    )
    connected, subprotocol = await comm.connect(timeout=WAIT)
    assert connected
    assert subprotocol == "skyport.v1"  # the secret is never echoed back
    assert (await comm.receive_json_from(timeout=WAIT))["type"] == "hello"
    await comm.disconnect()


@run_async
async def test_invalid_token_is_refused_even_with_a_valid_session(sam):
    for secret in ("sky_not-a-real-token", "garbage", ""):
        state, code, _ = await open_socket([ORIGIN, await session_cookie(sam), token_header(secret)])
        assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED), secret


@run_async
async def test_token_in_query_string_is_refused(connor, acme):
    _, secret = await database_sync_to_async(new_token)(connor, acme)
    state, code, _ = await open_socket([], path=f"{PATH}?token={secret}")
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_expired_token_is_refused(connor, acme):
    token, secret = await database_sync_to_async(new_token)(connor, acme)
    await database_sync_to_async(
        lambda: ApiToken._base_manager.filter(pk=token.pk).update(
            expires_at=timezone.now() - datetime.timedelta(seconds=1)
        )
    )()
    state, code, _ = await open_socket([token_header(secret)])
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_token_socket_sees_only_its_organisation(connor, acme, globex):
    await committed(services.membership_create, actor=None, user=connor, organization=globex, role="manager")
    _, secret = await database_sync_to_async(new_token)(connor, acme)
    _, _, by_token = await open_socket([token_header(secret)])
    _, _, by_session = await open_socket([ORIGIN, await session_cookie(connor)])

    await committed(
        services.notification_send, recipient=connor, organization_id=globex.pk, text="globex news"
    )
    assert (await by_session.receive_json_from(timeout=WAIT))["text"] == "globex news"
    assert await by_token.receive_nothing(timeout=QUIET)

    await committed(services.notification_send, recipient=connor, organization_id=acme.pk, text="acme news")
    message = await by_token.receive_json_from(timeout=WAIT)
    assert (message["text"], message["unread"]) == ("acme news", 1)  # the globex one is not counted either
    await by_token.disconnect()
    await by_session.disconnect()


# --- sessions and tokens that end ---------------------------------------------------------------------------
@run_async
async def test_membership_remove_closes_the_members_sockets(sam, connor, web):
    _, _, by_session = await open_socket([ORIGIN, await session_cookie(connor)])
    membership = await database_sync_to_async(
        lambda: Membership.objects.all_tenants().get(user=connor, project=web)
    )()

    await committed(services.membership_remove, actor=sam, membership=membership)
    ended = await by_session.receive_json_from(timeout=WAIT)
    assert ended == {"type": "session.ended", "reason": "access changed"}
    await expect_close(by_session, CLOSE_FORBIDDEN)


@run_async
async def test_membership_remove_refuses_the_old_session_cookie(sam, connor, web):
    cookie = await session_cookie(connor)
    membership = await database_sync_to_async(
        lambda: Membership.objects.all_tenants().get(user=connor, project=web)
    )()
    await committed(services.membership_remove, actor=sam, membership=membership)
    state, code, _ = await open_socket([ORIGIN, cookie])
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_password_change_closes_the_socket(vera):
    _, _, comm = await open_socket([ORIGIN, await session_cookie(vera)])
    await committed(services.user_change_password, user=vera, old_password="skyport-demo",
                    new_password="a-much-longer-passphrase")
    ended = await comm.receive_json_from(timeout=WAIT)
    assert ended == {"type": "session.ended", "reason": "password changed"}
    await expect_close(comm, CLOSE_FORBIDDEN)


@run_async
async def test_token_revoke_closes_only_the_socket_of_that_token(connor, acme):
    token, secret = await database_sync_to_async(new_token)(connor, acme)
    _, other_secret = await database_sync_to_async(new_token)(connor, acme)
    _, _, revoked = await open_socket([token_header(secret)])
    _, _, other = await open_socket([token_header(other_secret)])
    _, _, browser = await open_socket([ORIGIN, await session_cookie(connor)])

    await committed(services.token_revoke, actor=connor, token=token)
    assert await revoked.receive_json_from(timeout=WAIT) == {"type": "token.revoked"}
    await expect_close(revoked, CLOSE_FORBIDDEN)
    assert await other.receive_nothing(timeout=QUIET)
    assert await browser.receive_nothing(timeout=QUIET)

    state, code, _ = await open_socket([token_header(secret)])
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)
    await other.disconnect()
    await browser.disconnect()


@run_async
async def test_access_changed_is_forwarded(sam, vera, acme, data):
    _, _, comm = await open_socket([ORIGIN, await session_cookie(vera)])
    await committed(services.membership_create, actor=sam, user=vera, organization=acme,
                    project=data, role="viewer")
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "access.changed"}
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "pong"}
    await comm.disconnect()

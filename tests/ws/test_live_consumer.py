"""What every live socket shares (apps.core.ws.LiveConsumer), checked on each of the three: signing out in the
browser ends the socket at once (the session's own group, not the next ping), and a message type meant for another
kind of socket on the same user group leaves it open."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.test import Client

from apps.core.events import user_group
from apps.core.ws_auth import CLOSE_FORBIDDEN
from tests.ws.test_notifications import ORIGIN, WAIT, expect_close, open_socket, run_async, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

# path → the user who may open it (notifications: anyone; catalog: a designer; deployments: a member)
SOCKETS = [("/ws/notifications/", "connor"), ("/ws/catalog/", "dennis"), ("/ws/deployments/", "connor")]


@database_sync_to_async
def _sign_out(cookie: tuple[bytes, bytes]) -> None:
    browser = Client()
    name, _, key = cookie[1].decode().partition("=")
    browser.cookies[name] = key
    assert browser.post("/accounts/logout/").status_code == 302


@pytest.mark.parametrize(("path", "persona"), SOCKETS)
def test_sign_out_ends_every_kind_of_socket_at_once(path, persona, request, web):
    user = request.getfixturevalue(persona)

    @run_async
    async def scenario():
        cookie = await session_cookie(user)
        state, hello, comm = await open_socket([ORIGIN, cookie], path=path)
        assert state == "open" and hello["type"] == "hello", hello
        await _sign_out(cookie)
        assert await comm.receive_json_from(timeout=WAIT) == {"type": "session.ended", "reason": "signed out"}
        await expect_close(comm, CLOSE_FORBIDDEN)

    scenario()


@pytest.mark.parametrize(("path", "persona"), SOCKETS)
def test_a_message_for_another_kind_of_socket_is_ignored(path, persona, request, web):
    user = request.getfixturevalue(persona)

    @run_async
    async def scenario():
        state, _, comm = await open_socket([ORIGIN, await session_cookie(user)], path=path)
        assert state == "open"
        await get_channel_layer().group_send(user_group(user.pk), {"type": "something.else", "value": 1})
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=WAIT) == {"type": "pong"}
        await comm.disconnect()

    scenario()

"""/ws/catalog/ through the real ASGI application (origin check, session/token auth, routing, consumer): the live
states of images and copies reach the organisations allowed to see them, and nobody else."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from apps.accounts import services as account_services
from apps.accounts.models import User
from apps.catalog.events import catalog_group, send_catalog_event
from apps.catalog.models import ImageCopy
from apps.core.ws_auth import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from tests.catalog.test_profiles import make_account, make_image
from tests.ws.test_notifications import (
    ORIGIN,
    QUIET,
    WAIT,
    new_token,
    open_socket,
    run_async,
    session_cookie,
    token_header,
)

pytestmark = pytest.mark.django_db(transaction=True)
PATH = "/ws/catalog/"


@database_sync_to_async
def acme_copy(acme, web) -> ImageCopy:
    image = make_image(web, "Debian", "12")
    account = make_account(acme, "sim-a")
    return ImageCopy.objects.create(organization=acme, image=image, account=account, region="region-1",
                                    state=ImageCopy.State.UPLOADING, progress=40)


@database_sync_to_async
def copy_progresses(copy: ImageCopy, progress: int, state: str = ImageCopy.State.UPLOADING) -> None:
    """What the push follower does: change the copy and send its event once the transaction commits."""
    with transaction.atomic():
        copy.progress, copy.state = progress, state
        copy.save(update_fields=["progress", "state"])
        send_catalog_event(copy=copy)


async def opened(user: User, path: str = PATH):
    state, hello, comm = await open_socket([ORIGIN, await session_cookie(user)], path=path)
    assert (state, hello) == ("open", {"type": "hello"})
    return comm


@run_async
async def test_designer_receives_the_copy_events_of_his_organisation(dennis, acme, web):
    copy = await acme_copy(acme, web)
    comm = await opened(dennis)
    await copy_progresses(copy, 75)
    assert await comm.receive_json_from(timeout=WAIT) == {
        "type": "catalog.event", "event": "image_copy", "id": copy.pk, "image": copy.image_id,
        "state": "uploading", "progress": 75, "error": "",
    }
    await comm.disconnect()


@run_async
async def test_outsiders_receive_nothing_of_acme(dennis, mallory, acme, web):
    copy = await acme_copy(acme, web)
    dennis_comm = await opened(dennis)
    mallory_comm = await opened(mallory)  # admin of Globex: her own organisation's socket opens
    await copy_progresses(copy, 100, ImageCopy.State.AVAILABLE)
    assert (await dennis_comm.receive_json_from(timeout=WAIT))["state"] == "available"
    assert await mallory_comm.receive_nothing(timeout=QUIET)
    await dennis_comm.disconnect()
    await mallory_comm.disconnect()


@run_async
async def test_roles_without_images_view_are_refused(connor, vera):
    for user in (connor, vera):
        state, code, _ = await open_socket([ORIGIN, await session_cookie(user)], path=PATH)
        assert (state, code) == ("closed", CLOSE_FORBIDDEN), user.username


@run_async
async def test_anonymous_socket_is_closed_with_4401():
    state, code, _ = await open_socket([ORIGIN], path=PATH)
    assert (state, code) == ("closed", CLOSE_UNAUTHENTICATED)


@run_async
async def test_foreign_origin_is_refused(dennis):
    state, _, _ = await open_socket([(b"origin", b"https://evil.example"), await session_cookie(dennis)], path=PATH)
    assert state == "denied"


@run_async
async def test_token_socket_reaches_only_its_organisation(dennis, acme, globex, web):
    @database_sync_to_async
    def setup():
        account_services.membership_create(actor=None, user=dennis, organization=globex, role="admin")
        return new_token(dennis, globex)[1]

    secret = await setup()
    copy = await acme_copy(acme, web)
    state, _, by_token = await open_socket([token_header(secret)], path=PATH)
    assert state == "open"
    await copy_progresses(copy, 90)
    assert await by_token.receive_nothing(timeout=QUIET)
    await by_token.disconnect()


@run_async
async def test_rolled_back_change_is_never_sent(dennis, acme, web):
    copy = await acme_copy(acme, web)
    comm = await opened(dennis)

    @database_sync_to_async
    def change_then_roll_back():
        with pytest.raises(RuntimeError), transaction.atomic():
            send_catalog_event(copy=copy)
            raise RuntimeError("the write failed")

    await change_then_roll_back()
    assert await comm.receive_nothing(timeout=QUIET)
    await comm.disconnect()


@run_async
async def test_removed_role_ends_the_socket(sam, dennis, web):
    comm = await opened(dennis)

    @database_sync_to_async
    def remove():
        from apps.accounts.models import Membership

        membership = Membership.objects.all_tenants().get(user=dennis, project=web)
        with transaction.atomic():
            account_services.membership_remove(actor=sam, membership=membership)

    await remove()
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "session.ended", "reason": "access changed"}
    assert await comm.receive_output(timeout=WAIT) == {"type": "websocket.close", "code": CLOSE_FORBIDDEN}


@run_async
async def test_only_catalog_fields_are_forwarded(dennis, acme):
    comm = await opened(dennis)
    await get_channel_layer().group_send(catalog_group(acme.pk), {
        "type": "catalog.event", "event": "image", "id": 7, "image": 7, "state": "ready", "progress": 100,
        "error": "", "secret": "never",
    })
    message = await comm.receive_json_from(timeout=WAIT)
    assert "secret" not in message and message["state"] == "ready"
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=WAIT) == {"type": "pong"}
    await comm.disconnect()

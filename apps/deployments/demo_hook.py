"""A demo before-launch hook receiver, served by Skyport itself: Acme's "name policy" refuses any deployment whose
name contains "forbidden". It verifies every request exactly as an outside receiver must (see `hook_verify`), with
the secret of the hook row(s) whose URL points at it, and answers 401 to anything unsigned, badly signed or stale.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from apps.core import crypto
from apps.deployments.hooks import hook_verify
from apps.deployments.models import Hook

log = logging.getLogger(__name__)

DEMO_HOOK_PATH = "/demo/hooks/name-policy/"
VETO_MESSAGE = "Names containing 'forbidden' are not allowed by the Acme launch policy."


def _secrets_for(path: str) -> list[str]:
    """The secrets of the hooks that call this path (disabled ones too: an admin tests a hook before enabling it)."""
    # a receiver is not a tenant's page: it finds its hooks by URL, whichever organisation registered them
    hooks = Hook.objects.all_tenants().filter(url__contains=path).order_by("pk")
    found = []
    for hook in hooks:
        if urlsplit(hook.url).path != path:
            continue
        try:
            found.append(crypto.decrypt(hook.secret_encrypted))
        except crypto.DecryptionError:
            log.warning("demo hook receiver: the secret of hook %s cannot be decrypted", hook.pk)
    return found


def _secrets_off_thread(path: str) -> list[str]:
    try:
        return _secrets_for(path)
    finally:
        close_old_connections()


@csrf_exempt  # called by Skyport's hook sender, authenticated by the signature instead of a session
@require_POST
async def name_policy(request: HttpRequest) -> JsonResponse:
    """Async, and its one database read off the shared sync thread: in the embedded demo the launch that calls this
    hook runs its Celery task inline, inside a request that holds that thread while it waits for the answer."""
    body = request.body
    timestamp = request.headers.get("X-Skyport-Timestamp", "")
    signature = request.headers.get("X-Skyport-Signature", "")
    secrets = await sync_to_async(_secrets_off_thread, thread_sensitive=False)(request.path)
    if not any(hook_verify(secret, timestamp, body, signature) for secret in secrets):
        return JsonResponse({"error": "Missing, wrong or expired signature."}, status=401)
    try:
        payload = json.loads(body)
    except ValueError:
        return JsonResponse({"error": "The body is not JSON."}, status=400)
    if payload.get("event") == "before_launch":
        name = str((payload.get("deployment") or {}).get("name", ""))
        if "forbidden" in name.lower():
            return JsonResponse({"allow": False, "message": VETO_MESSAGE})
    return JsonResponse({"allow": True})

"""/ws/deployments/: live states of the deployments (and their instances) a user may see.

Messages to the client (JSON, always with "type"):
  hello             {}                                               once, after the handshake
  deployment.event  {"deployment", "project", "sequence", "event", "state", "instance", "instance_state",
                     "previous", "operation"}                       (apps.deployments.events)
  watching          {"deployment", "sequence", "state"}              answer to "watch"
  unwatched         {"deployment"}                                   answer to "unwatch"
  error             {"deployment", "error"}                          a watch refused ("not found"), or a watched
                                                                     deployment no longer visible
  pong              {}                                               answer to "ping"
  access.changed    {}                                               roles changed: the socket now follows what
                                                                     they allow; reload lists
  session.ended     {"reason"}    then close 4403                    sign in again
Messages from the client: {"type": "watch", "deployment": id}, {"type": "unwatch", "deployment": id},
{"type": "ping"} (every 20 s: it renews the watches' presence, and a session signed out or a token expired since the
handshake is noticed there and ends the socket).

Without watching anything the socket receives the events of every deployment in the projects where the user holds
`deployments.view`, or of the whole organisation for organisation roles (a token reaches its own organisation only).
Watching adds one deployment's group and tells the reconciler someone is looking (it then syncs that deployment
often). Each event of a deployment carries the next `sequence` of that deployment: a client that sees a jump fetches
the deployment again (`GET /api/v1/deployments/<id>/`). A user who may see no deployment anywhere is closed with 4403.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from functools import lru_cache
from typing import Any, NamedTuple

from channels.db import database_sync_to_async

from apps.core.access import get_access
from apps.core.ws import LiveConsumer
from apps.core.ws_auth import CLOSE_FORBIDDEN
from apps.deployments.events import deployment_group, org_deployments_group, project_deployments_group

log = logging.getLogger(__name__)

VIEW = "deployments.view"
EVENT_FIELDS = ("deployment", "project", "sequence", "event", "state", "instance", "instance_state", "previous",
                "operation")
# one socket watches the deployments of one page or one CLI session: this bounds groups and presence writes
MAX_WATCHED = 200
# the same event reaches a socket once per group it is in (project and watched deployment): numbers remembered
MAX_REMEMBERED = 2048
NOT_FOUND = "not found"


def _deployment_id(value: Any) -> int | None:
    """An id as the client sent it (number or digits), or None when it cannot be one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value) or None
    return None


@lru_cache(maxsize=1024)
def _event_text(values: tuple[Any, ...]) -> str:
    """The JSON of one deployment event, encoded once per process however many sockets relay it (a watched
    deployment can have hundreds of watchers on one server)."""
    return json.dumps({"type": "deployment.event", **dict(zip(EVENT_FIELDS, values, strict=True))})


def _touch_presence(deployment_ids: list[int]) -> None:
    """Tell the reconciler that someone is watching: it then syncs these deployments often. Presence is a hint, so
    a cache that cannot be reached must not break the socket."""
    try:
        from apps.deployments.presence import watch_touch
    except ImportError:
        return
    for deployment_id in deployment_ids:
        try:
            watch_touch(deployment_id)
        except Exception:
            log.warning("could not record that deployment %s is watched", deployment_id, exc_info=True)


class Watched(NamedTuple):
    """A watched deployment as the socket needs it: what to tell the client and which groups carry its events."""

    sequence: int
    state: str
    project_id: int
    organization_id: int


class DeploymentConsumer(LiveConsumer):
    watching: set[int]
    last_sequence: OrderedDict[int, int]

    async def connect(self) -> None:
        self.watching = set()
        self.last_sequence = OrderedDict()
        await super().connect()

    async def forget(self) -> None:
        self.watching = set()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "error": "messages are JSON objects with a type"})
            return
        kind = content.get("type")
        if kind == "ping":
            await self.ping()
            if self.watching:  # the keepalive also renews the watches' presence
                await database_sync_to_async(_touch_presence)(sorted(self.watching))
        elif kind == "watch":
            await self._watch(content.get("deployment"))
        elif kind == "unwatch":
            await self._unwatch(content.get("deployment"))
        else:
            await self.send_json({"type": "error", "error": "unknown message type"})

    # --- events (type "a.b" arrives at method a_b) ----------------------------------------------------------------
    async def deployment_event(self, event: dict[str, Any]) -> None:
        deployment_id, sequence = event.get("deployment"), event.get("sequence")
        if isinstance(deployment_id, int) and isinstance(sequence, int):
            if sequence <= self.last_sequence.get(deployment_id, 0):
                return  # already relayed through another group (or older than what the client was told)
            self._remember(deployment_id, sequence)
        values = tuple(event.get(k) for k in EVENT_FIELDS)
        try:
            text = _event_text(values)
        except TypeError:  # an unhashable field (never sent by events.py): encode it for this socket alone
            text = json.dumps({"type": "deployment.event", **dict(zip(EVENT_FIELDS, values, strict=True))})
        await self.send(text_data=text)

    async def access_changed(self, event: dict[str, Any]) -> None:
        await self.refresh_access()
        groups = await self.follow_groups()
        if not groups:
            await self.leave_all()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        for group in self.groups_joined - groups:
            if group.startswith("deployment."):
                continue  # watched deployments are checked one by one below
            await self.leave(group)
        await self.join(groups)
        visible = await self._visible(self.watching)
        for deployment_id in sorted(self.watching - set(visible)):
            await self._drop_watch(deployment_id)
            await self.send_json({"type": "error", "deployment": deployment_id, "error": NOT_FOUND})
        for deployment_id, row in sorted(visible.items()):
            # still visible, but perhaps no longer through a group the socket is in (an object grant remains)
            group = deployment_group(deployment_id)
            if not self._covered(row) and group not in self.groups_joined:
                await self.channel_layer.group_add(group, self.channel_name)
                self.groups_joined.add(group)
        # from here on the socket follows the new roles; a list on screen may be missing deployments
        await self.send_json({"type": "access.changed"})

    # --- watching one deployment ----------------------------------------------------------------------------------
    async def _watch(self, raw: Any) -> None:
        deployment_id = _deployment_id(raw)
        echo = raw if isinstance(raw, int | str) and not isinstance(raw, bool) else None
        if deployment_id is None:
            await self.send_json({"type": "error", "deployment": echo, "error": NOT_FOUND})
            return
        if deployment_id not in self.watching and len(self.watching) >= MAX_WATCHED:
            await self.send_json({"type": "error", "deployment": deployment_id,
                                  "error": f"a socket watches at most {MAX_WATCHED} deployments: unwatch some"})
            return
        current = await self._current(deployment_id)
        if current is not None and not self._covered(current):
            # join before reading again: an event committed after the read reaches the socket; one committed
            # before it carries a number the client is told is already current, and is dropped
            group = deployment_group(deployment_id)
            joined_here = group not in self.groups_joined
            if joined_here:
                await self.channel_layer.group_add(group, self.channel_name)
            current = await self._current(deployment_id)
            if current is None and joined_here:
                await self.channel_layer.group_discard(group, self.channel_name)
            elif current is not None:
                self.groups_joined.add(group)
        if current is None:
            await self.send_json({"type": "error", "deployment": deployment_id, "error": NOT_FOUND})
            return
        sequence, state = current.sequence, current.state
        self.watching.add(deployment_id)
        self._remember(deployment_id, max(sequence, self.last_sequence.get(deployment_id, 0)))
        await self.send_json({"type": "watching", "deployment": deployment_id, "sequence": sequence, "state": state})
        await database_sync_to_async(_touch_presence)([deployment_id])

    async def _unwatch(self, raw: Any) -> None:
        deployment_id = _deployment_id(raw)
        if deployment_id is not None and deployment_id in self.watching:
            await self._drop_watch(deployment_id)
        await self.send_json({"type": "unwatched", "deployment": deployment_id})

    async def _drop_watch(self, deployment_id: int) -> None:
        self.watching.discard(deployment_id)
        await self.leave(deployment_group(deployment_id))

    def _remember(self, deployment_id: int, sequence: int) -> None:
        self.last_sequence[deployment_id] = sequence
        self.last_sequence.move_to_end(deployment_id)
        while len(self.last_sequence) > MAX_REMEMBERED:
            self.last_sequence.popitem(last=False)

    # --- helpers --------------------------------------------------------------------------------------------------
    @database_sync_to_async
    def follow_groups(self) -> set[str]:
        """Organisation roles see every project of their organisation: one org group instead of one per project (a
        socket in both would receive each event twice)."""
        access = get_access(self.user)
        orgs = access.orgs_allowing(VIEW)
        projects = {p for p in access.projects_allowing(VIEW) if access.project_roles[p][0] not in orgs}
        if self.token_organization_id is not None:
            orgs &= {self.token_organization_id}
            projects = {p for p in projects if access.project_roles[p][0] == self.token_organization_id}
        return {org_deployments_group(o) for o in orgs} | {project_deployments_group(p) for p in projects}

    def _covered(self, row: Watched) -> bool:
        """The socket already receives this deployment's events through its project or organisation group: joining
        the deployment's own group too would deliver every event twice (dropped here, but relayed to every watcher
        socket by the server first)."""
        return bool({project_deployments_group(row.project_id), org_deployments_group(row.organization_id)}
                    & self.groups_joined)

    @database_sync_to_async
    def _current(self, deployment_id: int) -> Watched | None:
        """A deployment the user may see (its sequence, state and where its events go), read with fresh
        memberships; None for one that does not exist and one the user may not see alike."""
        from apps.deployments.models import Deployment

        self.refresh_access_now()
        rows = Deployment.objects.for_user(self.user, VIEW).filter(pk=deployment_id)
        found = rows.values_list("sequence", "state", "project_id", "organization_id").first()
        return Watched(int(found[0]), str(found[1]), int(found[2]), int(found[3])) if found is not None else None

    @database_sync_to_async
    def _visible(self, deployment_ids: set[int]) -> dict[int, Watched]:
        from apps.deployments.models import Deployment

        if not deployment_ids:
            return {}
        rows = Deployment.objects.for_user(self.user, VIEW).filter(pk__in=deployment_ids)
        return {pk: Watched(int(sequence), str(state), int(project_id), int(organization_id))
                for pk, sequence, state, project_id, organization_id
                in rows.values_list("pk", "sequence", "state", "project_id", "organization_id")}

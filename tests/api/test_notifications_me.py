from __future__ import annotations

import pytest

from apps.accounts import services
from apps.accounts.models import Notification


@pytest.mark.django_db
class TestNotifications:
    def test_own_only_and_mark_read(self, api, connor, vera, acme):
        notes = [
            services.notification_send(recipient=connor, organization_id=acme.pk, text=f"n{i}")
            for i in range(3)
        ]
        other = services.notification_send(recipient=vera, organization_id=acme.pk, text="for vera")
        client = api(connor)
        assert [n["text"] for n in client.get("/api/v1/notifications/").json()["results"]] == [
            "n2",
            "n1",
            "n0",
        ]
        assert client.get(f"/api/v1/notifications/{other.pk}/").status_code == 404

        response = client.post(
            "/api/v1/notifications/mark-read/", {"ids": [notes[0].pk, other.pk]}, format="json"
        )
        assert response.status_code == 200 and response.json() == {"marked": 1}
        assert [n["text"] for n in client.get("/api/v1/notifications/?unread=true").json()["results"]] == [
            "n2",
            "n1",
        ]
        assert client.post("/api/v1/notifications/mark-read/", {}, format="json").json() == {"marked": 2}
        other.refresh_from_db()
        assert other.read_at is None
        assert Notification.objects.all_tenants().filter(recipient=connor, read_at__isnull=True).count() == 0

    def test_mark_read_rejects_bad_ids(self, api, connor):
        response = api(connor).post("/api/v1/notifications/mark-read/", {"ids": ["x"]}, format="json")
        assert response.status_code == 400
        assert "ids" in response.json()["error"]["fields"]


@pytest.mark.django_db
class TestMe:
    def test_connor(self, api, connor, acme, web, data):
        body = api(connor).get("/api/v1/me/").json()
        assert body["user"] == {
            "id": connor.pk,
            "username": "connor",
            "email": "connor@acme.example",
            "display_name": "Connor Consumer",
        }
        assert body["authenticated_by"] == "session" and body["token"] is None
        [org] = body["organizations"]
        assert (org["slug"], org["roles"]) == ("acme", [])
        assert "deployments.launch" in org["actions"] and "members.manage" not in org["actions"]
        projects = {p["slug"]: p for p in body["projects"]}
        assert set(projects) == {"web", "data"}
        assert projects["web"]["role"] == "member" and "deployments.launch" in projects["web"]["actions"]

    def test_sam_and_vera(self, api, sam, vera):
        sam_body = api(sam).get("/api/v1/me/").json()
        assert sam_body["organizations"][0]["roles"] == ["admin"]
        assert "members.manage" in sam_body["organizations"][0]["actions"]
        assert {p["role"] for p in sam_body["projects"]} == {None}
        vera_body = api(vera).get("/api/v1/me/").json()
        [web] = vera_body["projects"]
        assert web["role"] == "viewer" and "deployments.launch" not in web["actions"]
        assert "deployments.view" in web["actions"]

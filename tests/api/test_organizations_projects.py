from __future__ import annotations

import pytest

from apps.accounts import services
from apps.accounts.models import Organization, Project
from apps.core.models import AuditEvent
from tests.api.conftest import count


@pytest.mark.django_db
class TestOrganizations:
    def test_list_shows_only_own_organisations(self, api, vera, mallory):
        assert [o["slug"] for o in api(vera).get("/api/v1/organizations/").json()["results"]] == ["acme"]
        assert [o["slug"] for o in api(mallory).get("/api/v1/organizations/").json()["results"]] == ["globex"]

    def test_admin_renames(self, api, sam, acme):
        response = api(sam).patch(f"/api/v1/organizations/{acme.pk}/", {"name": "Acme Corp"}, format="json")
        assert response.status_code == 200
        assert response.json()["name"] == "Acme Corp"
        acme.refresh_from_db()
        assert acme.name == "Acme Corp"
        assert AuditEvent.objects.all_tenants().filter(verb="organization.update", actor=sam).exists()

    def test_manager_sees_but_cannot_rename(self, api, marty, acme):
        response = api(marty).patch(f"/api/v1/organizations/{acme.pk}/", {"name": "Mine"}, format="json")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
        acme.refresh_from_db()
        assert acme.name == "Acme"

    def test_slug_cannot_be_changed(self, api, sam, acme):
        response = api(sam).patch(f"/api/v1/organizations/{acme.pk}/", {"slug": "evil"}, format="json")
        assert response.status_code == 400
        assert response.json()["error"]["fields"] == {"slug": ["Unknown field."]}
        acme.refresh_from_db()
        assert acme.slug == "acme"

    def test_no_create_or_delete(self, api, sam, acme):
        assert (
            api(sam).post("/api/v1/organizations/", {"name": "X", "slug": "x"}, format="json").status_code
            == 405
        )
        assert api(sam).delete(f"/api/v1/organizations/{acme.pk}/").status_code == 405
        assert count(Organization) == 2


@pytest.mark.django_db
class TestProjects:
    def test_sam_creates_a_project(self, api, sam, acme):
        response = api(sam).post(
            "/api/v1/projects/",
            {"organization": acme.pk, "name": "Batch jobs", "description": "nightly"},
            format="json",
        )
        assert response.status_code == 201, response.content
        body = response.json()
        assert (
            body["slug"] == "batch-jobs" and body["organization"] == acme.pk and body["is_archived"] is False
        )
        project = Project.objects.all_tenants().get(pk=body["id"])
        assert project.description == "nightly"
        event = AuditEvent.objects.all_tenants().get(verb="project.create", object_id=str(project.pk))
        assert event.actor == sam

    def test_member_cannot_create(self, api, connor, acme):
        before = count(Project)
        response = api(connor).post(
            "/api/v1/projects/", {"organization": acme.pk, "name": "Mine"}, format="json"
        )
        assert response.status_code == 403
        assert count(Project) == before

    def test_duplicate_slug_is_a_field_error(self, api, sam, acme):
        before = count(Project)
        response = api(sam).post(
            "/api/v1/projects/", {"organization": acme.pk, "name": "Web 2", "slug": "web"}, format="json"
        )
        assert response.status_code == 400
        assert "slug" in response.json()["error"]["fields"]
        assert count(Project) == before

    def test_list_is_scoped_and_filtered(self, api, vera, sam, acme, web, data):
        assert [p["slug"] for p in api(vera).get("/api/v1/projects/").json()["results"]] == ["web"]
        names = {
            p["slug"] for p in api(sam).get(f"/api/v1/projects/?organization={acme.pk}").json()["results"]
        }
        assert names == {"web", "data"}
        services.project_update(actor=sam, project=data, is_archived=True)
        archived = api(sam).get("/api/v1/projects/?archived=true").json()["results"]
        assert [p["slug"] for p in archived] == ["data"]

    def test_sam_renames_and_archives(self, api, sam, web):
        response = api(sam).patch(
            f"/api/v1/projects/{web.pk}/", {"name": "Website", "is_archived": True}, format="json"
        )
        assert response.status_code == 200
        web.refresh_from_db()
        assert (web.name, web.is_archived) == ("Website", True)

    def test_viewer_patch_is_403_and_changes_nothing(self, api, vera, web):
        response = api(vera).patch(f"/api/v1/projects/{web.pk}/", {"name": "Vera's"}, format="json")
        assert response.status_code == 403
        web.refresh_from_db()
        assert web.name == "Web"

    def test_outsider_gets_404(self, api, mallory, web):
        client = api(mallory)
        assert client.get(f"/api/v1/projects/{web.pk}/").status_code == 404
        assert client.patch(f"/api/v1/projects/{web.pk}/", {"name": "Mine"}, format="json").status_code == 404
        web.refresh_from_db()
        assert web.name == "Web"

    def test_organization_cannot_move(self, api, sam, web, globex):
        response = api(sam).patch(f"/api/v1/projects/{web.pk}/", {"organization": globex.pk}, format="json")
        assert response.status_code == 400
        web.refresh_from_db()
        assert web.organization.slug == "acme"

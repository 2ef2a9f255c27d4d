from __future__ import annotations

import csv
import io

import pytest
from django.utils import timezone

from apps.accounts import services
from apps.core.models import AuditEvent
from tests.api.conftest import count


def _csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.django_db
class TestAuditEvents:
    def test_security_browses_with_filters(self, api, sam, sarah, acme, web):
        services.project_update(actor=sam, project=web, name="Website")
        client = api(sarah)
        rows = client.get("/api/v1/audit-events/?verb=project.&actor=SAM").json()["results"]
        assert [(r["verb"], r["actor"], r["object_id"]) for r in rows] == [
            ("project.update", "sam", str(web.pk))
        ]
        assert rows[0]["changes"] == {"name": {"from": "Web", "to": "Website"}}
        by_object = client.get(f"/api/v1/audit-events/?object_type=project&object_id={web.pk}").json()[
            "results"
        ]
        assert {r["verb"] for r in by_object} == {"project.create", "project.update"}
        in_project = client.get(f"/api/v1/audit-events/?project={web.pk}&organization={acme.pk}").json()[
            "results"
        ]
        assert in_project and all(r["project"] == web.pk for r in in_project)
        future = (timezone.now() + timezone.timedelta(hours=1)).isoformat()
        assert client.get("/api/v1/audit-events/", {"since": future}).json()["results"] == []
        assert len(client.get("/api/v1/audit-events/", {"until": future}).json()["results"]) == count(
            AuditEvent, organization=acme
        )
        detail = client.get(f"/api/v1/audit-events/{rows[0]['id']}/")
        assert detail.status_code == 200 and detail.json()["verb"] == "project.update"

    def test_bad_filter_is_400(self, api, sarah):
        response = api(sarah).get("/api/v1/audit-events/?since=yesterday&organization=1.5")
        assert response.status_code == 400
        assert set(response.json()["error"]["fields"]) == {"since", "organization"}

    def test_cursor_pagination(self, api, sarah, acme):
        client = api(sarah)
        total = count(AuditEvent, organization=acme)
        seen, url = [], "/api/v1/audit-events/?page_size=3"
        while url:
            body = client.get(url).json()
            assert "count" not in body
            seen += [r["id"] for r in body["results"]]
            url = body["next"]
        assert len(seen) == len(set(seen)) == total
        assert seen == sorted(seen, reverse=True)

    def test_member_and_outsider_see_nothing(self, api, connor, mallory, acme):
        event = AuditEvent.objects.all_tenants().filter(organization=acme).first()
        for user in (connor, mallory):
            rows = api(user).get("/api/v1/audit-events/").json()["results"]
            assert not [r for r in rows if r["organization"] == acme.pk]
            assert api(user).get(f"/api/v1/audit-events/{event.pk}/").status_code == 404

    def test_read_only(self, api, sam, acme):
        event = AuditEvent.objects.all_tenants().filter(organization=acme).first()
        client = api(sam)
        assert client.post("/api/v1/audit-events/", {"verb": "x"}, format="json").status_code == 405
        assert client.delete(f"/api/v1/audit-events/{event.pk}/").status_code == 405
        assert AuditEvent.objects.all_tenants().filter(pk=event.pk).exists()


@pytest.mark.django_db
class TestAuditExport:
    def test_security_exports_csv_with_formulas_neutralised(self, api, sam, sarah, acme):
        services.project_create(actor=sam, organization=acme, name='=HYPERLINK("http://x")', slug="evil")
        before = count(AuditEvent, verb="audit.export")
        response = api(sarah).get("/api/v1/audit-events/export/", HTTP_ACCEPT="text/csv")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/csv")
        assert "attachment" in response["Content-Disposition"]
        rows = _csv(response)
        assert rows[0][:5] == ["time", "organization", "project", "actor", "verb"]
        labels = [r[7] for r in rows[1:]]
        assert '\'=HYPERLINK("http://x")' in labels
        assert not any(label.startswith("=") for label in labels)
        assert count(AuditEvent, verb="audit.export") == before + 1
        export = AuditEvent.objects.all_tenants().get(verb="audit.export")
        assert export.actor == sarah and export.organization_id == acme.pk

    def test_export_applies_filters(self, api, sam, sarah, acme, web):
        services.project_update(actor=sam, project=web, name="Website")
        rows = _csv(
            api(sarah).get(f"/api/v1/audit-events/export/?verb=project.update&organization={acme.pk}")
        )
        assert [r[4] for r in rows[1:]] == ["project.update"]

    @pytest.mark.parametrize("who", ["connor", "marty", "vera"])
    def test_without_audit_export_is_refused(self, api, personas, who):
        before = count(AuditEvent)
        response = api(personas[who]).get("/api/v1/audit-events/export/")
        assert response.status_code == 403
        assert response["Content-Type"] == "application/json"
        assert count(AuditEvent) == before

    def test_other_organisation_is_404(self, api, sarah, globex):
        before = count(AuditEvent)
        response = api(sarah).get(f"/api/v1/audit-events/export/?organization={globex.pk}")
        assert response.status_code == 404
        assert count(AuditEvent) == before

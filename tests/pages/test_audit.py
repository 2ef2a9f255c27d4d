import csv
import datetime
import io

import pytest
from django.utils import timezone

from apps.accounts import services
from apps.core.models import AuditEvent


def csv_rows(response):
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def trail(sam, connor, acme, web, globex, mallory):
    services.project_create(actor=sam, organization=acme, name='=HYPERLINK("http://x")', slug="evil")
    services.token_create(actor=connor, organization=acme, name="connor-ci")
    m = services.membership_create(actor=sam, user=connor, organization=acme, role="security")
    services.membership_update(
        actor=sam, membership=m, expires_at=timezone.now() + datetime.timedelta(days=9)
    )
    services.project_create(actor=mallory, organization=globex, name="Globex secret plan", slug="plan")


@pytest.mark.django_db
class TestAuditBrowser:
    def verbs(self, response):
        return [e.verb for e in response.context["events"]]

    def test_filters(self, client_as, sam, trail):
        client = client_as(sam)
        everything = client.get("/audit/")
        assert everything.status_code == 200
        assert "Globex secret plan" not in everything.content.decode()
        assert set(self.verbs(client.get("/audit/?verb=membership."))) == {
            "membership.create",
            "membership.update",
        }
        assert set(self.verbs(client.get("/audit/?actor=connor"))) == {"token.create"}
        assert self.verbs(client.get("/audit/?object_type=apitoken")) == ["token.create"]
        assert self.verbs(client.get("/audit/?q=HYPERLINK")) == ["project.create"]
        today = timezone.now().date()
        assert len(self.verbs(client.get(f"/audit/?date_from={today}&date_to={today}"))) >= 5
        assert self.verbs(client.get(f"/audit/?date_to={today - datetime.timedelta(days=1)}")) == []

    def test_changes_are_shown_compactly(self, client_as, sam, trail):
        html = client_as(sam).get("/audit/?verb=membership.update").content.decode()
        assert 'class="sky-diff-field">expires_at</span>' in html

    def test_htmx_gets_the_results_only(self, client_as, sam, trail, htmx):
        response = client_as(sam).get("/audit/?verb=token.", **htmx)
        html = response.content.decode()
        assert "<html" not in html and "token.create" in html
        assert "HX-Request" in response["Vary"]

    def test_bad_dates_show_errors_not_a_crash(self, client_as, sam, trail):
        response = client_as(sam).get("/audit/?date_from=yesterday&verb=token.")
        assert response.status_code == 200
        assert "Enter a valid date" in response.content.decode()
        assert self.verbs(response) == ["token.create"]
        response = client_as(sam).get("/audit/?date_from=2020-02-01&date_to=2020-01-01")
        assert "end date is before the start date" in response.content.decode()

    def test_paginated_by_50(self, client_as, sam, acme):
        from apps.core import audit

        for i in range(60):
            audit.record(
                actor=sam,
                verb="test.bulk",
                organization_id=acme.pk,
                object_type="thing",
                object_label=f"thing {i}",
            )
        first = client_as(sam).get("/audit/?verb=test.")
        assert len(first.context["events"]) == 50
        second = client_as(sam).get("/audit/?verb=test.&page=2")
        assert len(second.context["events"]) == 10
        assert 'href="?verb=test.&amp;page=2"' in first.content.decode()

    def test_who_may_browse(self, client_as, marty, vera, connor, mallory, trail):
        connor.refresh_from_db()  # the role change in `trail` ended connor's earlier sessions
        assert client_as(marty).get("/audit/").status_code == 200
        assert client_as(vera).get("/audit/").status_code == 404
        assert client_as(connor).get("/audit/").status_code == 200  # connor got the security role in `trail`
        assert "HYPERLINK" not in client_as(mallory).get("/audit/").content.decode()


@pytest.mark.django_db
class TestAuditExport:
    def test_export_neutralises_formulas_and_applies_filters(self, client_as, sam, trail):
        response = client_as(sam).get("/audit/export.csv?verb=project.")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/csv")
        rows = csv_rows(response)
        header, body = rows[0], rows[1:]
        labels = [row[header.index("object")] for row in body]
        # newest first: the formula-looking project name comes out quoted, plain names unchanged
        assert labels == ['\'=HYPERLINK("http://x")', "Data", "Web"]
        assert all(row[header.index("verb")].startswith("project.") for row in body)
        assert not any("Globex" in cell for row in body for cell in row)
        # the export itself leaves a trace
        assert AuditEvent.objects.all_tenants().filter(verb="audit.export", actor=sam).count() == 1

    def test_export_needs_audit_export(self, client_as, marty, vera, trail):
        assert client_as(marty).get("/audit/export.csv").status_code == 403
        assert client_as(vera).get("/audit/export.csv").status_code == 404
        assert not AuditEvent.objects.all_tenants().filter(verb="audit.export").exists()

    def test_export_link_carries_the_filters(self, client_as, sam, sarah, marty, trail):
        html = client_as(sarah).get("/audit/?actor=sam&q=web").content.decode()
        assert 'href="/audit/export.csv?actor=sam&amp;q=web"' in html
        assert "/audit/export.csv" not in client_as(marty).get("/audit/").content.decode()

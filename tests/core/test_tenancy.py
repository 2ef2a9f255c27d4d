import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Membership, Notification, Organization, Project
from apps.core.access import get_access
from apps.core.tenancy import CrossTenantError, UnscopedQueryError, system_scope


@pytest.mark.django_db
class TestFailClosed:
    @pytest.mark.parametrize(
        "use",
        [
            lambda qs: list(qs),
            lambda qs: qs.count(),
            lambda qs: qs.exists(),
            lambda qs: qs.first(),
            lambda qs: qs.get(pk=1),
            lambda qs: list(qs.values_list("pk", flat=True)),
            lambda qs: qs.filter(pk=1).update(name="x"),
            lambda qs: qs.filter(pk=0).delete(),
            lambda qs: list(qs.iterator()),
            lambda qs: qs.aggregate(n=__import__("django.db.models", fromlist=["Count"]).Count("pk")),
            lambda qs: bool(qs),
            lambda qs: qs[0],
        ],
    )
    def test_unscoped_use_is_refused_before_any_query(self, personas, use):
        with CaptureQueriesContext(connection) as ctx, pytest.raises(UnscopedQueryError):
            use(Project.objects.all())
        assert len(ctx.captured_queries) == 0

    def test_scoped_and_explicit_escape_hatch_work(self, personas, connor):
        assert sorted(Project.objects.for_user(connor).values_list("slug", flat=True)) == ["data", "web"]
        assert Project.objects.all_tenants().count() == 3
        with system_scope():
            assert Project.objects.count() == 3

    def test_scope_survives_chaining(self, personas, vera):
        qs = Project.objects.for_user(vera).filter(slug__startswith="w").order_by("name").select_related()
        assert [p.slug for p in qs] == ["web"]

    def test_related_managers_are_scoped_by_their_parent(self, acme):
        assert sorted(acme.projects.values_list("slug", flat=True)) == ["data", "web"]

    def test_anonymous_sees_nothing(self, personas):
        from django.contrib.auth.models import AnonymousUser

        assert list(Organization.objects.for_user(AnonymousUser())) == []


@pytest.mark.django_db
class TestRolesReach:
    def test_org_role_reaches_every_project(self, marty, sam, sarah):
        for user in (marty, sam, sarah):
            assert sorted(Project.objects.for_user(user).values_list("slug", flat=True)) == ["data", "web"]

    def test_project_role_reaches_only_its_project(self, vera):
        assert list(Project.objects.for_user(vera).values_list("slug", flat=True)) == ["web"]
        assert list(Organization.objects.for_user(vera).values_list("slug", flat=True)) == ["acme"]

    def test_outsider_reaches_nothing_of_acme(self, mallory, acme):
        assert not Project.objects.for_user(mallory).filter(organization=acme).exists()
        assert not Membership.objects.for_user(mallory).filter(organization=acme).exists()

    def test_expired_membership_is_ignored_at_query_time(self, vera, web):
        import datetime

        from django.utils import timezone

        Membership.objects.all_tenants().filter(user=vera).update(
            expires_at=timezone.now() - datetime.timedelta(seconds=1)
        )
        vera.refresh_from_db()
        assert list(Project.objects.for_user(vera)) == []
        assert get_access(vera).organization_ids == set()

    def test_action_filters_rows(self, connor, sarah):
        from apps.core.models import AuditEvent

        assert not AuditEvent.objects.for_user(connor).exists()
        assert AuditEvent.objects.for_user(sarah).exists()

    def test_notifications_only_for_their_recipient(self, connor, vera, acme):
        Notification.objects.create(recipient=connor, organization=acme, text="hi")
        assert Notification.objects.for_user(connor).count() == 1
        assert Notification.objects.for_user(vera).count() == 0


@pytest.mark.django_db
class TestConsistency:
    def test_project_must_belong_to_the_row_organisation(self, connor, globex, web):
        before = Membership.objects.all_tenants().count()
        with pytest.raises(CrossTenantError):
            Membership.objects.create(user=connor, organization=globex, project=web, role="member")
        with pytest.raises(CrossTenantError):
            Membership.objects.bulk_create([Membership(user=connor, organization=globex, project=web, role="viewer")])
        assert Membership.objects.all_tenants().count() == before

    def test_row_cannot_move_to_another_organisation(self, vera, globex):
        m = Membership.objects.all_tenants().get(user=vera)
        m.organization = globex
        m.project = None
        m.role = "manager"
        with pytest.raises(CrossTenantError):
            m.save()
        assert Membership.objects.all_tenants().get(pk=m.pk).organization.slug == "acme"

    def test_organisation_is_filled_from_project(self, connor, web):
        from apps.accounts.models import Invitation

        inv = Invitation(project=web, email="x@example.com", role="viewer", token_hash="h" * 64,
                         expires_at="2999-01-01T00:00:00Z")
        inv.save()
        assert inv.organization_id == web.organization_id

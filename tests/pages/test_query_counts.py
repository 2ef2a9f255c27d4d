"""Pages run a constant number of queries whatever the number of rows they show."""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import User


class World:
    """Grows the demo organisation: members, projects, invitations, tokens, notifications and audit events."""

    def __init__(self, personas, acme, web):
        self.p, self.acme, self.web = personas, acme, web
        self.size = 0

    def grow_to(self, n):
        p, acme = self.p, self.acme
        soon = timezone.now() + datetime.timedelta(days=30)
        for i in range(self.size, n):
            user = User.objects.create_user(f"user{i}", f"user{i}@acme.example", "unused-password-123")
            services.membership_create(
                actor=None, user=user, organization=acme, project=self.web, role="member", expires_at=soon
            )
            project = services.project_create(
                actor=None, organization=acme, name=f"Project {i}", slug=f"p{i}"
            )
            services.membership_create(
                actor=None, user=p["connor"], organization=acme, project=project, role="member"
            )
            services.membership_create(
                actor=None, user=p["dennis"], organization=acme, project=project, role="designer"
            )
            services.invitation_create(
                actor=p["sam"], organization=acme, email=f"inv{i}@acme.example", role="manager"
            )
            services.token_create(actor=p["connor"], organization=acme, name=f"connor-{i}")
            services.token_create(actor=user, organization=acme, name=f"user-{i}")
            services.notification_send(recipient=p["connor"], organization_id=acme.pk, text=f"note {i}")
        self.size = n


# (user, page, text of a row that exists only once the world has 50 of everything)
PAGES = [
    ("sam", "/home/sysadmin/", "Project 49"),
    ("marty", "/home/infrastructure/", "Project 49"),
    ("sarah", "/home/security/", "user-49"),
    ("dennis", "/home/designer/", "Project 49"),
    ("connor", "/home/consumer/", "Project 49"),
    ("sam", "/org/members/", "Project 49"),  # 100 per page: the web rows move to page 2
    ("vera", "/org/members/", "user49@acme.example"),
    ("sarah", "/tokens/", "user-49"),
    ("connor", "/tokens/", "connor-49"),
    ("sam", "/audit/", "user-49"),
    ("sam", "/audit/?verb=membership.", "user49 — member in Web"),
    ("connor", "/notifications/", "note 49"),
]


@pytest.mark.django_db
def test_constant_queries(client_as, personas, acme, web, django_assert_num_queries):
    world = World(personas, acme, web)
    world.grow_to(5)
    clients = {name: client_as(personas[name]) for name, _, _ in PAGES}
    counts = {}
    for name, url, marker in PAGES:
        assert clients[name].get(url).status_code == 200  # warm-up: session and caches
        with CaptureQueriesContext(connection) as small:
            response = clients[name].get(url)
        assert response.status_code == 200
        assert marker not in response.content.decode()
        counts[name, url] = len(small.captured_queries)
    world.grow_to(50)
    for name, url, marker in PAGES:
        with django_assert_num_queries(counts[name, url], info=f"{name} {url}"):
            response = clients[name].get(url)
        assert response.status_code == 200
        assert marker in response.content.decode(), f"{name} {url} does not show the new rows"

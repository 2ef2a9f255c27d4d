import pytest
from django.template import Context, Template
from django.test import RequestFactory

from apps.core.access import get_access
from apps.core.templatetags.skyport import audit_changes, safe_link


@pytest.mark.django_db
def test_can_tag_asks_the_role_table_for_the_current_org_and_project(connor, acme, web, data):
    request = RequestFactory().get("/")
    request.user, request.access, request.organization_id = connor, get_access(connor), acme.pk
    template = Template(
        '{% load skyport %}{% can "members.manage" as manage %}{% can "deployments.launch" web as launch %}'
        "{{ manage }} {{ launch }}"
    )
    assert template.render(Context({"request": request, "web": web})) == "False True"


def test_audit_changes_are_compact():
    rows = audit_changes(
        {
            "role": {"from": "member", "to": "viewer"},
            "description": {"from": None, "to": ""},
            "name": {"from": None, "to": "Web"},
            "_": {"user": "connor"},
        }
    )
    assert rows == [
        {"field": "role", "before": "member", "after": "viewer"},
        {"field": "name", "before": "", "after": "Web", "extra": "1"},
        {"field": "user", "before": "", "after": "connor", "extra": "1"},
    ]


@pytest.mark.parametrize(
    "link, expected",
    [
        ("/home/consumer/", "/home/consumer/"),
        ("javascript:alert(1)", ""),
        ("//evil.example/", ""),
        ("https://evil.example/", ""),
        ("", ""),
    ],
)
def test_safe_link(link, expected):
    assert safe_link(link) == expected

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers
from rest_framework.test import APIRequestFactory

from apps.accounts.models import Membership, Project
from apps.core.api.serializers import ScopedPrimaryKeyRelatedField, TenantModelSerializer


def _context(user):
    request = APIRequestFactory().post("/")
    request.user = user
    return {"request": request}


class _Unscoped(TenantModelSerializer):
    class Meta:
        model = Membership
        fields = ["project"]


class _Scoped(serializers.Serializer):
    project = ScopedPrimaryKeyRelatedField(Project)


def test_a_writable_relation_must_be_scoped():
    with pytest.raises(ImproperlyConfigured, match="scoped"):
        _ = _Unscoped().fields


@pytest.mark.django_db
def test_scoped_field_resolves_only_reachable_rows(vera, web, data, ops):
    assert _Scoped(data={"project": web.pk}, context=_context(vera)).is_valid()
    for foreign in (data, ops):
        serializer = _Scoped(data={"project": foreign.pk}, context=_context(vera))
        assert not serializer.is_valid()
        assert "does not exist" in str(serializer.errors["project"][0])


@pytest.mark.django_db
def test_scoped_field_without_a_request_reaches_nothing(web):
    assert not _Scoped(data={"project": web.pk}).is_valid()

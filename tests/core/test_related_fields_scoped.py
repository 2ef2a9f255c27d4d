"""Every related field of every serializer and form reaches only what the signed-in user may see: serializers use
the scoped related fields, and forms declare empty querysets that the view fills per request (a form that forgets
to fill one offers nothing instead of every tenant's rows)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from django import forms
from rest_framework import serializers
from rest_framework.test import APIRequestFactory

import apps
from apps.core.api.serializers import ScopedRelatedField


def _modules(suffixes: tuple[str, ...]):
    for info in pkgutil.walk_packages(apps.__path__, "apps."):
        if info.name.endswith(suffixes):
            yield importlib.import_module(info.name)


def _classes(base, suffixes):
    seen = {}
    for module in _modules(suffixes):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, base) and cls.__module__.startswith("apps.") and not inspect.isabstract(cls):
                seen[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return seen


# model serializer bases without a Meta are building blocks, not serializers of anything
SERIALIZERS = {
    path: cls
    for path, cls in _classes(serializers.BaseSerializer, (".serializers",)).items()
    if not (issubclass(cls, serializers.ModelSerializer) and not hasattr(cls, "Meta"))
}
FORMS = _classes(forms.BaseForm, (".forms",))


def test_the_walk_finds_serializers_and_forms():
    assert len(SERIALIZERS) >= 5 and len(FORMS) >= 3


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(SERIALIZERS))
def test_serializer_relations_are_scoped(path, vera):
    cls = SERIALIZERS[path]
    request = APIRequestFactory().post("/")
    request.user = vera
    fields = cls(context={"request": request}).fields
    for name, field in fields.items():
        relation = field.child_relation if isinstance(field, serializers.ManyRelatedField) else field
        if isinstance(relation, serializers.RelatedField) and not field.read_only:
            assert isinstance(relation, ScopedRelatedField), f"{path}.{name} is not scoped to the request user"


@pytest.mark.parametrize("path", sorted(FORMS))
def test_form_choice_fields_start_empty(path):
    for name, field in FORMS[path].base_fields.items():
        if isinstance(field, forms.ModelChoiceField):
            qs = field.queryset
            assert qs is None or qs.query.is_empty(), f"{path}.{name} offers rows before the view scopes it"


@pytest.mark.django_db
def test_ids_must_be_integers_not_booleans_or_floats(api, sam, web):
    """`true`, 1.5 and "1e0" are not ids (they would otherwise be read as pk 1)."""
    from apps.accounts.models import Invitation

    before = Invitation.objects.all_tenants().count()
    for bad in (True, 1.5, "1e0", [web.pk], {"id": web.pk}):
        response = api(sam).post("/api/v1/invitations/", {"project": bad, "email": "x@acme.example",
                                                          "role": "viewer"}, format="json")
        assert response.status_code == 400, (bad, response.content)
        assert "project" in response.json()["error"]["fields"]
    assert Invitation.objects.all_tenants().count() == before
    ok = api(sam).post("/api/v1/invitations/", {"project": str(web.pk), "email": "y@acme.example", "role": "viewer"},
                       format="json")
    assert ok.status_code == 201, ok.content

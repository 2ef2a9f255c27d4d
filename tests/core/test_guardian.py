import pytest
from guardian.shortcuts import assign_perm, get_objects_for_user, remove_perm


@pytest.mark.django_db
def test_per_object_grants_work_with_the_custom_user(connor, vera, web, data):
    """Per-object grants (used for things the role table cannot say, e.g. one deployment handed to one user)."""
    assert not vera.has_perm("accounts.change_project", data)
    assign_perm("accounts.change_project", vera, data)
    vera = type(vera).objects.get(pk=vera.pk)  # fresh permission cache
    assert vera.has_perm("accounts.change_project", data)
    assert not vera.has_perm("accounts.change_project", web)
    from apps.accounts.models import Project

    granted = get_objects_for_user(vera, "accounts.change_project", klass=Project.objects.all_tenants())
    assert [p.slug for p in granted] == ["data"]
    remove_perm("accounts.change_project", vera, data)
    vera = type(vera).objects.get(pk=vera.pk)
    assert not vera.has_perm("accounts.change_project", data)

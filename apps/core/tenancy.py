"""Tenant scoping that fails closed.

Every tenant model's default manager returns querysets that refuse to reach the database until they are scoped:
`Model.objects.for_user(user, action)` (what views, the API and selectors use) or the explicitly named
`Model.objects.all_tenants()` for system jobs that must cross tenants (reconciler, periodic tasks, seed).
Forgetting to scope raises `UnscopedQueryError` instead of leaking rows.

Django's own machinery keeps working: related managers are scoped by their parent row, the base manager (used for
foreign-key access, saves, cascades and refresh_from_db) is a plain manager, and uniqueness validation runs inside
`system_scope()`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, ClassVar

from django.core.exceptions import ValidationError
from django.db import connections, models
from django.db.models import Q

from apps.core.access import Access, get_access

_system_scope: contextvars.ContextVar[bool] = contextvars.ContextVar("skyport_system_scope", default=False)


# project id → its organisation id. A project never changes organisation (TenantModel.save refuses the move) and
# PostgreSQL never hands out an id twice, so an entry stays true for the life of the process; the bound keeps memory
# flat. SQLite may reuse the id of a rolled-back row: there nothing is remembered.
_PROJECT_ORGS: dict[int, int | None] = {}
PROJECT_ORGS_MAX = 4096
_UNKNOWN = object()


def project_organization_id(project_id: int) -> int | None:
    """The organisation of a project (None: no such project), read once per process: every tenant row with a
    project checks it on save, several times per launch."""
    known = _PROJECT_ORGS.get(project_id, _UNKNOWN)  # one read: another thread may clear the dict meanwhile
    if known is not _UNKNOWN:
        return known  # type: ignore[return-value]
    from apps.accounts.models import Project

    org_id = Project._base_manager.filter(pk=project_id).values_list("organization_id", flat=True).first()
    if org_id is not None and connections[Project._base_manager.db].vendor == "postgresql":
        if len(_PROJECT_ORGS) >= PROJECT_ORGS_MAX:
            _PROJECT_ORGS.clear()
        _PROJECT_ORGS[project_id] = org_id
    return org_id


class UnscopedQueryError(RuntimeError):
    pass


class CrossTenantError(ValidationError):
    pass


@contextlib.contextmanager
def system_scope() -> Iterator[None]:
    """Let unscoped tenant queries through inside this block (framework validation, system jobs)."""
    token = _system_scope.set(True)
    try:
        yield
    finally:
        _system_scope.reset(token)


class ScopedQuerySet(models.QuerySet):
    _skyport_scoped: bool = False

    def _clone(self):  # type: ignore[no-untyped-def]
        clone = super()._clone()
        clone._skyport_scoped = self._skyport_scoped
        return clone

    def _guard(self) -> None:
        if not self._skyport_scoped and not _system_scope.get():
            raise UnscopedQueryError(
                f"{self.model.__name__} query is not scoped: use {self.model.__name__}.objects.for_user(user, "
                "action) or .all_tenants() for system jobs"
            )

    def _mark_scoped(self) -> ScopedQuerySet:
        clone = self._chain()  # type: ignore[attr-defined]
        clone._skyport_scoped = True
        return clone

    # every path that reaches the database
    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._guard()
        super()._fetch_all()

    def count(self) -> int:
        if self._result_cache is None:
            self._guard()
        return super().count()

    def exists(self) -> bool:
        if self._result_cache is None:
            self._guard()
        return super().exists()

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._guard()
        return super().aggregate(*args, **kwargs)

    def iterator(self, chunk_size: int | None = None):  # type: ignore[no-untyped-def]
        self._guard()
        return super().iterator(chunk_size=chunk_size)

    def update(self, **kwargs: Any) -> int:
        self._guard()
        return super().update(**kwargs)

    def delete(self):  # type: ignore[no-untyped-def]
        self._guard()
        return super().delete()

    def explain(self, **options: Any) -> str:
        self._guard()
        return super().explain(**options)

    def bulk_create(self, objs, *args, **kwargs):  # type: ignore[no-untyped-def]
        for obj in objs:
            obj.check_tenant_consistency()
        return super().bulk_create(objs, *args, **kwargs)

    def bulk_update(self, objs, fields, batch_size=None):  # type: ignore[no-untyped-def]
        self._guard()
        return super().bulk_update(objs, fields, batch_size=batch_size)


class ScopedManager(models.Manager.from_queryset(ScopedQuerySet)):  # type: ignore[misc]
    def get_queryset(self) -> ScopedQuerySet:
        qs = super().get_queryset()
        # a related manager (org.projects, project.memberships) is scoped by the parent row it hangs from
        if getattr(self, "instance", None) is not None:
            qs._skyport_scoped = True
        return qs

    def for_user(self, user: Any, action: str | None = None) -> ScopedQuerySet:
        access = get_access(user)
        return self.for_access(access, action)

    def for_access(self, access: Access, action: str | None = None) -> ScopedQuerySet:
        model: Any = self.model
        action = action or model.VIEW_ACTION
        qs = self.get_queryset()
        if access.user_id is None:
            return qs.none()._mark_scoped()
        return qs.filter(model.scope_filter(access, action))._mark_scoped()

    def all_tenants(self) -> ScopedQuerySet:
        """Explicit cross-tenant access for system jobs. Stands out in review on purpose."""
        return self.get_queryset()._mark_scoped()


class ScopedModel(models.Model):
    """A model whose default manager fails closed. Subclasses define how a user's access reaches a row."""

    VIEW_ACTION: ClassVar[str] = "org.view"

    objects = ScopedManager()

    class Meta:
        abstract = True

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        raise NotImplementedError

    def check_tenant_consistency(self) -> None:
        pass

    def validate_unique(self, exclude: Any = None) -> None:
        with system_scope():
            super().validate_unique(exclude=exclude)

    def validate_constraints(self, exclude: Any = None) -> None:
        with system_scope():
            super().validate_constraints(exclude=exclude)


class TenantModel(ScopedModel):
    """A row of one organisation and, when `project` is not null, of one project of it.

    Subclasses declare `organization = models.ForeignKey("accounts.Organization", ...)` and, when they belong to a
    project, `project = models.ForeignKey("accounts.Project", ...)`. The project must belong to the organisation,
    and a row never moves to another organisation.
    """

    class Meta:
        abstract = True

    @classmethod
    def has_project(cls) -> bool:
        return any(f.name == "project" for f in cls._meta.get_fields())

    @classmethod
    def scope_filter(cls, access: Access, action: str) -> Q:
        orgs = access.orgs_allowing(action)
        reached = access.orgs_reached_through_projects(action)
        if not cls.has_project():
            return Q(organization_id__in=orgs | reached)
        return (
            Q(organization_id__in=orgs)
            | Q(project_id__in=access.projects_allowing(action))
            | Q(project__isnull=True, organization_id__in=reached)
        )

    @classmethod
    def from_db(cls, db, field_names, values):  # type: ignore[no-untyped-def]
        obj = super().from_db(db, field_names, values)
        obj._loaded_organization_id = getattr(obj, "organization_id", None)
        obj._loaded_project_id = obj.__dict__.get("project_id")  # a deferred project is not loaded for this
        return obj

    def check_tenant_consistency(self) -> None:
        org_id = getattr(self, "organization_id", None)
        project_id = getattr(self, "project_id", None)
        if project_id is not None:
            cached = self._state.fields_cache.get("project")
            if cached is not None and cached.pk == project_id:
                project_org_id = cached.organization_id
            elif (project_id == getattr(self, "_loaded_project_id", None)
                  and org_id == getattr(self, "_loaded_organization_id", None)):
                # the pair as loaded was checked when it was written: an update that keeps both needs no query
                project_org_id = org_id
            else:
                project_org_id = project_organization_id(project_id)
            if org_id is None:
                self.organization_id = org_id = project_org_id
            elif project_org_id != org_id:
                raise CrossTenantError(
                    {"project": "This project belongs to another organisation."}, code="cross_tenant"
                )
        if org_id is None:
            raise CrossTenantError({"organization": "An organisation is required."}, code="required")
        loaded = getattr(self, "_loaded_organization_id", None)
        if loaded is not None and loaded != org_id:
            raise CrossTenantError(
                {"organization": "A row cannot move to another organisation."}, code="cross_tenant"
            )

    def save(self, *args: Any, **kwargs: Any) -> None:  # noqa: DJ012
        self.check_tenant_consistency()
        super().save(*args, **kwargs)
        self._loaded_organization_id = self.organization_id
        self._loaded_project_id = getattr(self, "project_id", None)

"""Pages of the portal frame: home, persona homes, organisation and project context, the audit browser."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Project, User
from apps.core.access import Access
from apps.core.context_processors import get_frame
from apps.core.exports import audit_export_response
from apps.core.forms import AuditFilterForm
from apps.core.models import AuditEvent
from apps.core.personas import PERSONAS_BY_SLUG, personas_for
from apps.core.roles import Role
from apps.core.selectors import audit_events

AUDIT_PAGE_SIZE = 50


# --- helpers shared by the pages ------------------------------------------------------------------------
def org_page(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """A signed-in page about the current organisation; without one it explains why there is nothing."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if getattr(request, "organization_id", None) is None:
            return render(request, "core/no_role.html")
        return view(request, *args, **kwargs)

    return login_required(wrapper)


class PageRequest(HttpRequest):
    """A request of a signed-in user, as CurrentTenantMiddleware and django-htmx leave it."""

    user: User
    access: Access
    organization_id: int
    htmx: HtmxDetails


def org_id(request: PageRequest) -> int:
    """The current organisation (org_page makes sure there is one)."""
    return request.organization_id


def access_of(request: PageRequest) -> Access:
    return request.access


def org_can(request: PageRequest, action: str) -> bool:
    return access_of(request).can(action, organization_id=org_id(request))


def safe_next(request: HttpRequest, url: str | None, default: str = "core:home") -> str:
    """`url` when it stays on this site, otherwise the default page."""
    if url and url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return url
    return reverse(default)


def is_partial(request: HttpRequest) -> bool:
    """An htmx request that swaps part of the page (a history restore needs the whole page)."""
    htmx = getattr(request, "htmx", None)
    if not htmx:
        return False
    return not htmx.history_restore_request


def live_q(prefix: str = "") -> Q:
    """Memberships that have not expired."""
    return Q(**{f"{prefix}expires_at__isnull": True}) | Q(**{f"{prefix}expires_at__gt": timezone.now()})


def pending_invitations(user: Any, organization_id: int) -> Any:
    return (
        Invitation.objects.for_user(user, "members.manage")
        .filter(
            organization_id=organization_id,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .select_related("project", "invited_by")
        .order_by("-created_at")
    )


def projects_with_member_counts(user: Any, organization_id: int, action: str | None = None) -> Any:
    return (
        Project.objects.for_user(user, action)
        .filter(organization_id=organization_id)
        .annotate(member_count=Count("memberships", filter=live_q("memberships__"), distinct=True))
        .order_by("name")
    )


# --- home and persona homes -----------------------------------------------------------------------------
@login_required
def home(request: PageRequest) -> HttpResponse:
    personas = personas_for(access_of(request), getattr(request, "organization_id", None))
    if personas:
        return redirect("core:persona", persona=personas[0].slug)
    return render(request, "core/no_role.html")


def _sysadmin(request: PageRequest, organization_id: int) -> dict[str, Any]:
    user = request.user
    return {
        "projects": list(projects_with_member_counts(user, organization_id)),
        "member_count": Membership.objects.for_user(user)
        .filter(live_q(), organization_id=organization_id)
        .values("user_id")
        .distinct()
        .count(),
        "invitations": list(pending_invitations(user, organization_id)[:20]),
        "events": list(audit_events(user, organization=organization_id)[:15]),
    }


def _infrastructure(request: PageRequest, organization_id: int) -> dict[str, Any]:
    user = request.user
    counts = dict(
        Membership.objects.for_user(user)
        .filter(live_q(), organization_id=organization_id)
        .values_list("role")
        .annotate(n=Count("user_id", distinct=True))
        .order_by()
    )
    return {
        "projects": list(projects_with_member_counts(user, organization_id)),
        "role_counts": [(role, counts.get(role.value, 0)) for role in Role],
        "chart_data": {"labels": [], "datasets": []},
    }


def _security(request: PageRequest, organization_id: int) -> dict[str, Any]:
    user = request.user
    tokens = ApiToken.objects.for_user(user, "tokens.review").filter(organization_id=organization_id)
    if not org_can(request, "tokens.review"):
        tokens = tokens.filter(user=user)
    return {
        "events": list(audit_events(user, organization=organization_id)[:20]),
        "tokens": list(tokens.select_related("user").order_by("revoked_at", "-created_at")[:50]),
        "expiring": list(
            Membership.objects.for_user(user)
            .filter(organization_id=organization_id, expires_at__gt=timezone.now())
            .select_related("user", "project")
            .order_by("expires_at")[:50]
        ),
        "now": timezone.now(),
    }


def _designer(request: PageRequest, organization_id: int) -> dict[str, Any]:
    return {"projects": list(projects_with_member_counts(request.user, organization_id, "images.manage"))}


def _consumer(request: PageRequest, organization_id: int) -> dict[str, Any]:
    user = request.user
    access = access_of(request)
    projects = list(Project.objects.for_user(user).filter(organization_id=organization_id).order_by("name"))
    for project in projects:
        project.can_launch = access.can(
            "deployments.launch", organization_id=organization_id, project_id=project.pk
        )
    return {
        "projects": projects,
        "read_only": not any(p.can_launch for p in projects),
        "tokens": list(
            ApiToken.objects.for_user(user)
            .filter(organization_id=organization_id, user=user, revoked_at__isnull=True)
            .order_by("-created_at")[:10]
        ),
        "notifications": list(
            Notification.objects.for_user(user).filter(organization_id=organization_id)[:10]
        ),
    }


PERSONA_PAGES: dict[str, Callable[[PageRequest, int], dict[str, Any]]] = {
    "sysadmin": _sysadmin,
    "infrastructure": _infrastructure,
    "security": _security,
    "designer": _designer,
    "consumer": _consumer,
}


@org_page
def persona_home(request: PageRequest, persona: str) -> HttpResponse:
    chosen = PERSONAS_BY_SLUG.get(persona)
    if chosen is None or chosen not in personas_for(access_of(request), org_id(request)):
        raise Http404("No such home page here.")
    context = PERSONA_PAGES[chosen.slug](request, org_id(request))
    return render(request, f"core/home_{chosen.slug}.html", {"persona": chosen, **context})


# --- organisation and project context -------------------------------------------------------------------
def _int_or_404(value: str | None) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise Http404("Unknown choice.") from None


@login_required
@require_POST
def org_switch(request: PageRequest) -> HttpResponse:
    chosen = _int_or_404(request.POST.get("organization"))
    if chosen not in access_of(request).organization_ids:
        raise Http404("No such organisation.")
    request.session["org_id"] = chosen
    request.session.pop("project_id", None)
    return redirect("core:home")


@org_page
@require_POST
def project_switch(request: PageRequest) -> HttpResponse:
    raw = request.POST.get("project", "")
    if raw == "":
        request.session.pop("project_id", None)
    else:
        scoped = Project.objects.for_user(request.user).filter(organization_id=org_id(request))
        project = get_object_or_404(scoped, pk=_int_or_404(raw))
        request.session["project_id"] = project.pk
    return redirect(safe_next(request, request.POST.get("next")))


# --- audit browser --------------------------------------------------------------------------------------
def _audit_form(request: PageRequest, action: str) -> AuditFilterForm:
    frame = get_frame(request)
    object_types = list(
        AuditEvent.objects.for_user(request.user, action)
        .filter(organization_id=org_id(request))
        .order_by("object_type")
        .values_list("object_type", flat=True)
        .distinct()
    )
    data = request.GET.copy()
    data.pop("page", None)
    if "project" not in data and frame.project is not None:
        data["project"] = str(frame.project.pk)  # the navbar's project context is the default filter
    form = AuditFilterForm(data or None, object_types=object_types, projects=frame.projects)
    if form.is_bound:
        form.is_valid()
    return form


@org_page
@require_GET
def audit(request: PageRequest) -> HttpResponse:
    if not org_can(request, "audit.view"):
        raise Http404("No audit trail here.")
    form = _audit_form(request, "audit.view")
    events = audit_events(request.user, organization=org_id(request), **form.selector_filters())
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "events": list(page.object_list),
        "filter_query": query.urlencode(),
        "can_export": org_can(request, "audit.export"),
    }
    template = "core/_audit_results.html" if is_partial(request) else "core/audit.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@org_page
@require_GET
def audit_export(request: PageRequest) -> HttpResponseBase:
    if not org_can(request, "audit.view"):
        raise Http404("No audit trail here.")
    if not org_can(request, "audit.export"):
        raise PermissionDenied("Exporting the audit trail needs the admin or security role.")
    form = _audit_form(request, "audit.export")
    events = audit_events(
        request.user, action="audit.export", organization=org_id(request), **form.selector_filters()
    )
    return audit_export_response(actor=request.user, events=events, organization_id=org_id(request))

"""Cloud pages: accounts (list, add, detail with catalogue, sync, edit, rotation), grants, the access review.

Views validate with forms and call apps.clouds.services for every write; a ServiceError becomes form errors.
Rows named in a URL are looked up through scoped querysets (404 outside the user's reach). Credentials are never
put in a template context: forms carry them from the POST to the service only.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.models import Project
from apps.clouds import selectors, services
from apps.clouds.forms import AccessReviewFilterForm, AccountForm, GrantForm, PriceForm, RotateForm
from apps.clouds.models import CloudAccount, CloudGrant, CloudImage, Flavor, Network
from apps.core import audit
from apps.core.exports import stream_csv
from apps.core.forms import add_service_error
from apps.core.views import PageRequest, org_can, org_id, org_page

# every credential field of every provider type: hidden from error reports
SECRET_POST_FIELDS = tuple(sorted({f"cred_{f.name}" for spec in services.PROVIDERS.values() for f in spec.credentials}))
CATALOGUE_LIMIT = 500


def _need(request: PageRequest, action: str) -> None:
    """404 for people who cannot see clouds at all, 403 for those who see them but may not do this."""
    if not org_can(request, "clouds.view") and not org_can(request, action):
        raise Http404("No cloud accounts here.")
    if not org_can(request, action):
        raise PermissionDenied(f"You are not allowed to do this ({action}).")


def _account(request: PageRequest, pk: int, action: str | None = None) -> CloudAccount:
    account = get_object_or_404(CloudAccount.objects.for_user(request.user), pk=pk)
    if action and not request.access.can_on(action, account):
        raise PermissionDenied(f"You are not allowed to do this ({action}).")
    return account


def _credential_field_map(account: CloudAccount) -> dict[str, str]:
    return {"credentials": f"cred_{services.PROVIDERS[account.kind].secret_field}", "kind": "__all__"}


# --- accounts -----------------------------------------------------------------------------------------------------
@org_page
@require_GET
def accounts(request: PageRequest) -> HttpResponse:
    _need(request, "clouds.view")
    rows = list(selectors.accounts_with_counts(request.user, org_id(request)))
    for a in rows:
        a.synced_ago = selectors.seconds_ago(a.last_sync_at)  # type: ignore[attr-defined]
    kinds = [services.PROVIDERS[k] for k in services.PROVIDERS if k in services.drivers.enabled_kinds()]
    return render(request, "clouds/accounts.html", {
        "accounts": rows, "kinds": kinds, "can_manage": org_can(request, "clouds.manage"),
    })


@sensitive_post_parameters(*SECRET_POST_FIELDS)
@org_page
@require_http_methods(["GET", "POST"])
def account_add(request: PageRequest) -> HttpResponse:
    _need(request, "clouds.manage")
    kinds = [k for k in services.PROVIDERS if k in services.drivers.enabled_kinds()]
    kind = request.POST.get("kind") or request.GET.get("kind") or kinds[0]
    if kind not in kinds:
        raise Http404("Unknown cloud type.")
    form = AccountForm(request.POST or None, kind=kind)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                account = _create(request, form, kind)
            except ValidationError as e:
                add_service_error(form, e, {"credentials": f"cred_{form.spec.secret_field}", "kind": "__all__"})
            else:
                messages.success(request, f"{account.name} is connected. Its catalogue is being synced.")
                return redirect("clouds:account-detail", pk=account.pk)
    return render(request, "clouds/account_add.html", {
        "form": form, "spec": services.PROVIDERS[kind], "kinds": [services.PROVIDERS[k] for k in kinds],
    }, status=status)


def _create(request: PageRequest, form: AccountForm, kind: str) -> CloudAccount:
    from apps.accounts.models import Organization

    organization = get_object_or_404(Organization.objects.for_user(request.user), pk=org_id(request))
    d = form.cleaned_data
    account = services.cloud_account_create(
        actor=request.user, organization=organization, name=d["name"], kind=kind, credentials=form.credentials(),
        endpoint=d["endpoint"], regions=form.region_list(), default_region=d["default_region"], options=d["options"],
    )
    services.cloud_account_request_sync(actor=request.user, account=account)
    return account


def _detail_context(request: PageRequest, account: CloudAccount, **forms: Any) -> dict[str, Any]:
    def catalogue(model: Any) -> list[Any]:
        rows = list(
            model.objects.for_user(request.user).filter(account_id=account.pk)
            .order_by("-is_active", "region", *model._meta.ordering)[:CATALOGUE_LIMIT]
        )
        for r in rows:
            r.synced_ago = selectors.seconds_ago(r.synced_at)
        return rows

    can_manage = request.access.can_on("clouds.manage", account)
    grants = list(
        CloudGrant.objects.for_user(request.user).filter(account_id=account.pk)
        .select_related("project", "granted_by", "revoked_by").order_by("revoked_at", "project__name")
    )
    editing = {
        "name": account.name, "regions": " ".join(account.regions), "default_region": account.default_region,
        "endpoint": account.endpoint, "options": _json(account.options),
    }
    return {
        "account": account,
        "spec": services.PROVIDERS.get(account.kind),
        "synced_ago": selectors.seconds_ago(account.last_sync_at),
        "flavors": catalogue(Flavor),
        "images": catalogue(CloudImage),
        "networks": catalogue(Network),
        "grants": grants,
        "can_manage": can_manage,
        "can_grant": request.access.can_on("grants.manage", account),
        "edit_form": forms.get("edit_form") or AccountForm(initial=editing, kind=account.kind, editing=True),
        "rotate_form": forms.get("rotate_form") or RotateForm(kind=account.kind),
        "price_form": PriceForm(),
        "limit": CATALOGUE_LIMIT,
    }


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True) if value else ""


@org_page
@require_GET
def account_detail(request: PageRequest, pk: int) -> HttpResponse:
    account = _account(request, pk)
    return render(request, "clouds/account_detail.html", _detail_context(request, account))


@sensitive_post_parameters(*SECRET_POST_FIELDS)
@org_page
@require_POST
def account_edit(request: PageRequest, pk: int) -> HttpResponse:
    account = _account(request, pk, "clouds.manage")
    form = AccountForm(request.POST, kind=account.kind, editing=True)
    if form.is_valid():
        d = form.cleaned_data
        try:
            services.cloud_account_update(
                actor=request.user, account=account, name=d["name"], regions=form.region_list(),
                default_region=d["default_region"], endpoint=d["endpoint"], options=d["options"] or {},
                credentials=form.credentials() or None,
            )
        except ValidationError as e:
            add_service_error(form, e, _credential_field_map(account))
        else:
            messages.success(request, "The account is saved.")
            return redirect("clouds:account-detail", pk=account.pk)
    return render(request, "clouds/account_detail.html", _detail_context(request, account, edit_form=form),
                  status=400)


@sensitive_post_parameters(*SECRET_POST_FIELDS)
@org_page
@require_POST
def account_rotate(request: PageRequest, pk: int) -> HttpResponse:
    account = _account(request, pk, "clouds.manage")
    form = RotateForm(request.POST, kind=account.kind)
    if form.is_valid():
        try:
            services.cloud_account_rotate_credentials(actor=request.user, account=account,
                                                      credentials=form.credentials())
        except ValidationError as e:
            add_service_error(form, e, _credential_field_map(account))
        else:
            messages.success(request, "The credentials are replaced.")
            return redirect("clouds:account-detail", pk=account.pk)
    return render(request, "clouds/account_detail.html", _detail_context(request, account, rotate_form=form),
                  status=400)


@org_page
@require_POST
def account_sync(request: PageRequest, pk: int) -> HttpResponseBase:
    account = _account(request, pk, "clouds.manage")
    try:
        services.cloud_account_request_sync(actor=request.user, account=account)
    except ValidationError as e:
        messages.error(request, " ".join(e.messages))
    else:
        messages.success(request, f"Sync of {account.name} queued.")
    return redirect("clouds:account-detail", pk=account.pk)


@org_page
@require_POST
def account_deactivate(request: PageRequest, pk: int) -> HttpResponseBase:
    account = _account(request, pk, "clouds.manage")
    services.cloud_account_deactivate(actor=request.user, account=account)
    messages.success(request, f"{account.name} is deactivated: no new launches; running servers keep running.")
    return redirect("clouds:account-detail", pk=account.pk)


@org_page
@require_POST
def flavor_price(request: PageRequest, pk: int) -> HttpResponseBase:
    flavor = get_object_or_404(Flavor.objects.for_user(request.user), pk=pk)
    if not request.access.can_on("clouds.manage", flavor):
        raise PermissionDenied("You are not allowed to do this (clouds.manage).")
    form = PriceForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(str(m) for errs in form.errors.values() for m in errs))
    else:
        try:
            services.flavor_set_price(actor=request.user, flavor=flavor, price_per_hour=form.cleaned_data["price"])
        except ValidationError as e:
            messages.error(request, " ".join(e.messages))
        else:
            messages.success(request, f"Price of {flavor.name} ({flavor.region}) saved.")
    return redirect("clouds:account-detail", pk=flavor.account_id)


# --- grants -------------------------------------------------------------------------------------------------------
def _grant_choices(request: PageRequest) -> tuple[list[CloudAccount], list[Project]]:
    accounts = list(CloudAccount.objects.for_user(request.user, "grants.manage")
                    .filter(organization_id=org_id(request), is_active=True).order_by("name"))
    projects = list(Project.objects.for_user(request.user, "grants.manage")
                    .filter(organization_id=org_id(request), is_archived=False).order_by("name"))
    return accounts, projects


@org_page
@require_http_methods(["GET", "POST"])
def grants(request: PageRequest) -> HttpResponse:
    _need(request, "clouds.view" if request.method == "GET" else "grants.manage")
    accounts, projects = _grant_choices(request)
    form = GrantForm(request.POST or None, accounts=accounts, projects=projects)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            account = next(a for a in accounts if a.pk == form.cleaned_data["account"])
            project = next(p for p in projects if p.pk == form.cleaned_data["project"])
            try:
                services.grant_create(actor=request.user, account=account, project=project,
                                      regions=form.region_list())
            except ValidationError as e:
                add_service_error(form, e)
            else:
                messages.success(request, f"{account.name} is granted to {project.name}.")
                return redirect("clouds:grants")
    rows = list(
        CloudGrant.objects.for_user(request.user).filter(organization_id=org_id(request))
        .select_related("account", "project", "granted_by", "revoked_by")
        .order_by("revoked_at", "account__name", "project__name")
    )
    return render(request, "clouds/grants.html", {
        "grants": rows, "form": form, "can_grant": org_can(request, "grants.manage"),
    }, status=status)


@org_page
@require_POST
def grant_revoke(request: PageRequest, pk: int) -> HttpResponseBase:
    grant = get_object_or_404(CloudGrant.objects.for_user(request.user).select_related("account", "project"), pk=pk)
    if not request.access.can_on("grants.manage", grant):
        raise PermissionDenied("You are not allowed to do this (grants.manage).")
    try:
        services.grant_revoke(actor=request.user, grant=grant)
    except ValidationError as e:
        messages.error(request, " ".join(e.messages))
    else:
        messages.success(request, f"{grant.account.name} is no longer granted to {grant.project.name}.")
    if request.POST.get("next") == "account":
        return redirect("clouds:account-detail", pk=grant.account_id)
    return redirect("clouds:grants")


# --- access review ------------------------------------------------------------------------------------------------
def _review(request: PageRequest) -> tuple[AccessReviewFilterForm, selectors.AccessReview]:
    if not org_can(request, "access.review"):
        raise Http404("No access review here.")
    choices_accounts = list(CloudAccount.objects.for_user(request.user, "access.review")
                            .filter(organization_id=org_id(request)).order_by("name"))
    choices_projects = list(Project.objects.for_user(request.user, "access.review")
                            .filter(organization_id=org_id(request)).order_by("name"))
    form = AccessReviewFilterForm(request.GET or None, accounts=choices_accounts, projects=choices_projects)
    filters = form.filters() if form.is_bound else {}
    review = selectors.access_review(request.user, org_id(request), **filters)
    return form, review


@org_page
@require_GET
def access_review(request: PageRequest) -> HttpResponse:
    form, review = _review(request)
    query = request.GET.urlencode()
    return render(request, "clouds/access_review.html", {"form": form, "review": review, "query": query})


@org_page
@require_GET
def access_review_export(request: PageRequest) -> HttpResponseBase:
    form, review = _review(request)
    audit.record(actor=request.user, verb="access_review.export", organization_id=org_id(request),
                 object_type="access_review", object_label="CSV export",
                 extra={k: v for k, v in form.filters().items() if v} if form.is_bound else None)
    return stream_csv("skyport-access-review.csv", selectors.REVIEW_CSV_HEADER, selectors.review_csv_rows(review))

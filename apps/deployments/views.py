"""Deployment pages: launching from the catalog (with a live price, quota and placement preview), the list of
deployments and each deployment's page (servers, operations, console, lease, transfer, timeline), kept live through
the /ws/deployments/ socket (static/js/deployments-live.js); for organisation roles the approvals queue, quotas,
launch hooks and the servers that need attention; and the SSH keys of one's profile.

Views validate shapes with forms and call the services for every write (apps.deployments.services, .quota_services,
.hooks, .reconciler): a ServiceError becomes form errors (or a message) with the input kept, a PermissionDenied the
403 page. Rows named in a URL are looked up through scoped querysets, so a row out of reach answers 404 exactly like
a missing one. Modules written alongside this one are imported inside the views that use them.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import F, Prefetch, Q, Sum, Window
from django.db.models.functions import RowNumber
from django.http import Http404, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.models import Membership, Organization, Project, SshKey, User
from apps.catalog.blueprints import HOURS_PER_MONTH
from apps.catalog.models import CatalogItem, CatalogPublication, HardwareProfile
from apps.clouds.models import CloudAccount, CloudGrant, Operation
from apps.clouds.selectors import seconds_ago
from apps.core.context_processors import get_frame
from apps.core.forms import add_service_error
from apps.core.permissions import ServiceError
from apps.core.roles import role_allows
from apps.core.views import PageRequest, access_of, live_q, org_can, org_id, org_page, safe_next
from apps.deployments import services
from apps.deployments.forms import (
    PARAM_PREFIX,
    QUOTA_LIMITS,
    AdoptForm,
    ApprovalDecisionForm,
    BulkForm,
    DeploymentActionForm,
    DeploymentFilterForm,
    ExtendForm,
    HookForm,
    InstanceActionForm,
    LaunchForm,
    QuotaForm,
    SshKeyForm,
    TransferForm,
    suggested_name,
)
from apps.deployments.models import (
    Approval,
    Deployment,
    Hook,
    HookDelivery,
    Instance,
    InstanceTransition,
    Quota,
    QuotaReservation,
    UnmanagedServer,
)
from apps.deployments.states import DeploymentState as D
from apps.deployments.states import InstanceState as S

LIST_PAGE_SIZE = 50  # as the API's pages: a page renders in a few tens of milliseconds at any table size
TIMELINE_LIMIT = 100
DELIVERIES_PER_HOOK = 20
ATTENTION_LIMIT = 200
# shown by default in the list: what still exists or still needs a look (a veto says why)
HIDDEN_BY_DEFAULT = (D.DELETED, D.CANCELLED)
CANCELLABLE = frozenset({D.REQUESTED, D.PENDING_APPROVAL, D.PROVISIONING, D.PARTIALLY_FAILED})
OVER = frozenset({D.DELETED, D.DELETING, D.CANCELLED, D.REJECTED, D.VETOED})
NO_CONSOLE = frozenset({S.PENDING, S.DELETING, S.DELETED})
# the default login of cloud images, by operating system (what `ssh user@address` needs)
LOGIN_USERS = {"debian": "debian", "ubuntu": "ubuntu", "centos": "centos", "fedora": "fedora", "rocky": "rocky",
               "almalinux": "almalinux", "alma": "almalinux", "amazon linux": "ec2-user", "rhel": "ec2-user",
               "red hat": "ec2-user", "opensuse": "opensuse", "sles": "ec2-user", "freebsd": "freebsd",
               "arch": "arch", "alpine": "alpine", "flatcar": "core", "coreos": "core"}
# the organisation-wide pages (subnavigation key → the role-table action that opens them to organisation roles)
ORG_SECTIONS = {"approvals": "deployments.approve", "quotas": "quotas.manage", "hooks": "hooks.manage",
                "attention": "clouds.view"}
LIVE_LABELS = json.dumps({"deployment": {k: str(v) for k, v in D.choices},
                          "instance": {k: str(v) for k, v in S.choices}})


# --- helpers ----------------------------------------------------------------------------------------------------------
def _page(request: PageRequest, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    """Every deployments page knows the labels the live script shows and who may see the org-wide sections."""
    access = access_of(request)
    organization_id = getattr(request, "organization_id", None)
    context = {
        "live_labels": LIVE_LABELS,
        "org_sections": {
            key: organization_id in access.orgs_allowing(action) for key, action in ORG_SECTIONS.items()
        } if organization_id is not None else {},
        **context,
    }
    return render(request, template, context, status=status)


def _org_role_or_404(request: PageRequest, action: str) -> None:
    """The organisation-wide pages exist for organisation roles only (the role table's action)."""
    if org_id(request) not in access_of(request).orgs_allowing(action):
        raise Http404("Nothing here.")


def _organization(request: PageRequest) -> Organization:
    return get_object_or_404(Organization.objects.for_user(request.user), pk=org_id(request))


def _can_operate(request: PageRequest, deployment: Deployment) -> bool:
    return services.deployment_can_operate(request.user, deployment)


def _require_operate(request: PageRequest, deployment: Deployment) -> None:
    if not _can_operate(request, deployment):
        raise PermissionDenied("You may look at this deployment but not change it (deployments.operate).")


def _messages_from(request: PageRequest, error: ValidationError) -> None:
    for text in error.messages:
        messages.error(request, text)


def _login_user(instance: Instance) -> str:
    image = instance.image
    os_name = ((image.os if image is not None else "") or (image.name if image is not None else "")).lower()
    for prefix, user in LOGIN_USERS.items():
        if os_name.startswith(prefix):
            return user
    return "root"


def _deployments(request: PageRequest) -> Any:
    return Deployment.objects.for_user(request.user, "deployments.view").select_related(
        "project", "owner", "catalog_item")


# what a row of the list shows of the related rows (the owner's password hash, the item's description: not read)
LIST_RELATED_DEFERRED = ("project__description", "owner__password", "owner__last_login", "owner__first_name",
                         "owner__last_name", "owner__email", "owner__date_joined", "catalog_item__summary",
                         "catalog_item__description", "catalog_item__icon")


# what a row of the list shows; the rest (user data, placement, keys) can be large and is read on the detail page
LIST_DEPLOYMENT_DEFERRED = ("parameters", "placement", "ssh_public_key", "state_message")
LIST_INSTANCE_FIELDS = ("id", "organization_id", "project_id", "deployment_id", "account_id", "account__name",
                        "account__organization_id", "role", "index", "state", "price_per_hour", "last_synced_at")


def _instances_prefetch() -> Prefetch:
    # the instances of deployments already scoped for the user
    return Prefetch("instances", queryset=Instance.objects.all_tenants().select_related("account")
                    .only(*LIST_INSTANCE_FIELDS).order_by("role", "index"))


def _summarise(deployment: Deployment) -> Deployment:
    """What a row shows, from its prefetched instances: live servers, clouds, cost per hour, oldest sync."""
    live = [i for i in deployment.instances.all() if i.state != S.DELETED]
    d: Any = deployment
    d.live_instances = live
    d.clouds = sorted({i.account.name for i in live})
    prices = [i.price_per_hour for i in live if i.price_per_hour is not None]
    d.cost_hourly = sum(prices, Decimal(0)) if prices else None
    synced = [i.last_synced_at for i in live if i.last_synced_at is not None]
    d.synced_at = min(synced) if synced and len(synced) == len(live) else None
    d.synced_ago = seconds_ago(d.synced_at)
    return deployment


# --- the list -------------------------------------------------------------------------------------------------------
def _list_context(request: PageRequest) -> dict[str, Any]:
    frame = get_frame(request)
    form = DeploymentFilterForm(request.GET or None, projects=frame.projects)
    data = form.cleaned_data if form.is_valid() else {}
    rows = _deployments(request).filter(organization_id=org_id(request))
    if data.get("owner") != "all":
        rows = rows.filter(owner=request.user)
    if data.get("project"):
        rows = rows.filter(project_id=data["project"])
    state = data.get("state") or ""
    if state == "all":
        pass
    elif state:
        rows = rows.filter(state=state)
    else:
        rows = rows.exclude(state__in=HIDDEN_BY_DEFAULT)
    rows = rows.defer(*LIST_DEPLOYMENT_DEFERRED, *LIST_RELATED_DEFERRED).prefetch_related(_instances_prefetch())
    rows = rows.order_by("-created_at", "-pk")
    page = Paginator(rows, LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    deployments = [_summarise(d) for d in page.object_list]
    query = request.GET.copy()
    query.pop("page", None)
    access = access_of(request)
    operable = {d.pk for d in deployments if access.can_on("deployments.operate", d)}
    return {
        "form": form,
        "page": page,
        "deployments": deployments,
        "operable": operable,
        "filter_query": query.urlencode(),
        "everyone": data.get("owner") == "all",
        "rows_url": reverse("deployments:rows") + (f"?{request.GET.urlencode()}" if request.GET else ""),
        "live_projects": ",".join(str(p.pk) for p in frame.projects) if data.get("project") is None
        else str(data["project"]),
    }


@org_page
@require_GET
def deployment_list(request: PageRequest) -> HttpResponse:
    return _page(request, "deployments/list.html", _list_context(request))


@org_page
@require_GET
@never_cache
def deployment_rows(request: PageRequest) -> HttpResponse:
    """The list's rows, fetched again by the live script when a deployment it does not show changes."""
    return _page(request, "deployments/_rows.html", _list_context(request))


@org_page
@require_POST
def deployment_bulk(request: PageRequest) -> HttpResponseBase:
    """Start, stop or delete the selected deployments; each one the user may not operate is refused (403) before
    anything is done."""
    access = access_of(request)
    if not access.projects_allowing("deployments.operate") and not access.orgs_allowing("deployments.operate"):
        raise PermissionDenied("Your role cannot operate deployments.")
    raw = [v for v in request.POST.getlist("ids") if v.isdigit() and len(v) < 19]
    visible = {d.pk: d for d in _deployments(request).filter(pk__in=[int(v) for v in raw])}
    form = BulkForm(request.POST, ids=list(visible))
    back = safe_next(request, request.POST.get("next"), "deployments:list")
    if not form.is_valid():
        for errors in form.errors.values():
            for text in errors:
                messages.error(request, str(text))
        return redirect(back)
    chosen = [visible[pk] for pk in form.cleaned_data["ids"]]
    refused = [d.name for d in chosen if not services.deployment_can_operate(request.user, d)]
    if refused:
        raise PermissionDenied(f"You may not operate {', '.join(refused)}.")

    action = form.cleaned_data["action"]
    done, failed = [], []
    for deployment in chosen:
        try:
            if action == "delete":
                services.deployment_delete(actor=request.user, deployment=deployment)
            else:
                services.deployment_action(actor=request.user, deployment=deployment, action=action)
        except ValidationError as e:
            failed.append(f"{deployment.name}: {' '.join(e.messages)}")
        else:
            done.append(deployment.name)
    verb = {"start": "Starting", "stop": "Stopping", "delete": "Deleting"}[action]
    if done:
        messages.success(request, f"{verb} {', '.join(done)}.")
    for text in failed:
        messages.error(request, text)
    return redirect(back)


# --- launching ------------------------------------------------------------------------------------------------------
def _launch_item(request: PageRequest, slug: str) -> CatalogItem:
    return get_object_or_404(
        CatalogItem.objects.for_user(request.user, "catalog.view")
        .filter(organization_id=org_id(request), is_enabled=True)
        .select_related("image", "profile", "blueprint_version__blueprint"),
        slug=slug,
    )


def _launch_projects(request: PageRequest, item: CatalogItem) -> list[Project]:
    """The projects the item is published to where the user may launch (the current project first)."""
    published = CatalogPublication.objects.for_user(request.user, "catalog.view").filter(item_id=item.pk)
    projects = list(
        Project.objects.for_user(request.user, "deployments.launch")
        .filter(organization_id=item.organization_id, is_archived=False,
                pk__in=published.values("project_id")).order_by("name")
    )
    current = get_frame(request).project
    if current is not None:
        projects.sort(key=lambda p: p.pk != current.pk)
    return projects


def _launch_project(request: PageRequest, projects: list[Project]) -> Project:
    raw = request.POST.get("project") or request.GET.get("project") or ""
    if not raw:
        return projects[0]
    project = next((p for p in projects if str(p.pk) == raw), None)
    if project is None:
        raise Http404("This item is not offered in that project.")
    return project


def _granted_accounts(project: Project) -> list[CloudAccount]:
    """The cloud accounts granted to the project (the choices of "Where"). The launch decides with the same
    grants; the user may launch in the project, which the caller checked."""
    grants = (CloudGrant.objects.all_tenants()
              .filter(project_id=project.pk, revoked_at__isnull=True, account__is_active=True)
              .select_related("account").order_by("account__name"))
    return list({g.account.pk: g.account for g in grants}.values())


def _sizes(organization_id: int) -> list[HardwareProfile]:
    # the organisation's sizes, as the launch resolves them (people who launch need not see the designers' pages)
    return list(HardwareProfile.objects.all_tenants().filter(organization_id=organization_id))


def _launch_form(request: PageRequest, item: CatalogItem, project: Project, data: Any = None) -> LaunchForm:
    parameters = None
    if item.kind == CatalogItem.Kind.BLUEPRINT and item.blueprint_version is not None:
        parameters = (item.blueprint_version.spec or {}).get("parameters") or {}
    initial = {"name": suggested_name(item.slug), "project": project.pk, "idempotency_key": uuid.uuid4().hex}
    return LaunchForm(
        data, initial=initial, item=item, sizes=_sizes(item.organization_id),
        accounts=_granted_accounts(project), ssh_keys=list(SshKey.objects.filter(user=request.user)),
        parameters=parameters,
    )


def _form_value(form: LaunchForm, name: str) -> Any:
    """A field's value as the page shows it (bound data, else its initial)."""
    if name not in form.fields:
        return None
    return form[name].value()


def _preview(request: PageRequest, item: CatalogItem, project: Project, form: LaunchForm) -> dict[str, Any]:
    """Where the launch would go and why, what it costs and what it takes from the quotas — computed by the same
    planning and placement code the launch runs, writing nothing."""
    from apps.deployments.quotas import RESOURCES, quota_usage

    size = _form_value(form, "size") if item.kind == CatalogItem.Kind.IMAGE else None
    cloud = _form_value(form, "cloud") or "cheapest"
    accounts = {f"account:{a.pk}": a for a in _granted_accounts(project)}
    account = accounts.get(cloud)
    policy = Deployment.Policy.ACCOUNT if account is not None else cloud
    if policy not in Deployment.Policy.values:
        policy = Deployment.Policy.CHEAPEST
    raw_parameters = {name[len(PARAM_PREFIX):]: form[name].value() for name in form.fields
                      if name.startswith(PARAM_PREFIX)}
    parameters = {k: v for k, v in raw_parameters.items() if v not in (None, "")}
    problems: list[str] = []
    servers: list[dict[str, Any]] = []
    try:
        plans, _values = services._server_plans(item, None, size=size or None, parameters=parameters,
                                                organization_id=project.organization_id)
    except ServiceError as exc:
        return {"problems": exc.messages, "servers": [], "quota_lines": [], "hourly": None}
    chosen_all = []
    for plan in plans:
        error = ""
        try:
            services._place(plan, actor=request.user, project=project, policy=policy, account=account)
        except ServiceError as exc:
            error = exc.messages[0]
        servers.append({
            "role": plan.role, "count": plan.count, "image": plan.image, "size": plan.profile,
            "error": error,
            "chosen": [{"where": c.where, "flavor": c.flavor.name, "price": c.price_per_hour,
                        "reason": services._placement_reason(policy, c, plan)} for c in dict.fromkeys(plan.chosen)],
            "rejected": plan.rejected,
        })
        if error:
            problems.append(f"Server {plan.role}: {error}")
        chosen_all += [(plan, c) for c in plan.chosen]
    prices = [c.price_per_hour for _, c in chosen_all]
    hourly = sum((p for p in prices if p is not None), Decimal(0)) if any(p is not None for p in prices) else None
    demand = {
        "instances": sum(p.count for p in plans),
        "vcpus": sum(c.flavor.vcpus for _, c in chosen_all),
        "ram_mb": sum(c.flavor.ram_mb for _, c in chosen_all),
        "disk_gb": sum(max(c.flavor.disk_gb, p.profile.disk_gb) for p, c in chosen_all),
    }
    quota_lines = []
    for quota, held in quota_usage(project=project, user=request.user):
        for field, limit_field, label, unit in RESOURCES:
            limit = getattr(quota, limit_field)
            if limit is None:
                continue
            asked = demand[field] if not problems else 0
            quota_lines.append({
                "scope": quota.scope_label, "text": f"{held[field]}{unit} of {limit}{unit} {label} used",
                "asked": f"+{asked}{unit}" if asked else "", "over": held[field] + asked > limit,
                "percent": min(100, round(100 * (held[field] + asked) / limit)) if limit else 100,
            })
    monthly = (hourly * HOURS_PER_MONTH).quantize(Decimal("0.01")) if hourly is not None else None
    threshold = item.approval_threshold_monthly
    approval = ""
    if threshold is not None and (threshold == 0 or (monthly or Decimal(0)) > threshold):
        approval = (f"Needs an approval: {monthly} a month is over the {threshold} threshold."
                    if threshold else f"{item.name} always needs an approval.")
    return {"problems": problems, "servers": servers, "hourly": hourly, "monthly": monthly,
            "quota_lines": quota_lines, "approval": approval, "policy": policy, "demand": demand}


def _launch_page(request: PageRequest, item: CatalogItem, project: Project, projects: list[Project],
                 form: LaunchForm, status: int) -> HttpResponse:
    return _page(request, "deployments/launch.html", {
        "item": item, "project": project, "projects": projects, "form": form,
        "preview": _preview(request, item, project, form),
        "open_options": form.options_need_attention(),
        "has_ssh_keys": len(form.fields["ssh_key"].choices) > 1,  # type: ignore[attr-defined]
    }, status=status)


LAUNCH_ERROR_FIELDS = {"policy": "cloud", "owner": "__all__"}


@org_page
@require_http_methods(["GET", "POST"])
def launch(request: PageRequest, slug: str) -> HttpResponseBase:
    item = _launch_item(request, slug)
    projects = _launch_projects(request, item)
    if not projects:
        raise PermissionDenied(f"You cannot launch {item.name}: your role does not allow launching in a project it "
                               "is published to.")
    project = _launch_project(request, projects)
    if request.method == "GET":
        return _launch_page(request, item, project, projects, _launch_form(request, item, project), 200)
    form = _launch_form(request, item, project, request.POST)
    if form.is_valid():

        data = form.cleaned_data
        policy, account_id = form.policy_and_account()
        account = next((a for a in _granted_accounts(project) if a.pk == account_id), None)
        if account_id is not None and account is None:
            form.add_error("cloud", "This cloud is not granted to the project.")
        else:
            try:
                deployment, created = services.deployment_request(
                    actor=request.user, project=project, name=data["name"], item=item,
                    size=data.get("size") if item.kind == CatalogItem.Kind.IMAGE else None,
                    policy=policy, account=account,
                    parameters=form.parameter_values() if item.kind == CatalogItem.Kind.BLUEPRINT else None,
                    ssh_key=int(data["ssh_key"]) if data.get("ssh_key") else None,
                    lease_days=data.get("lease_days"), idempotency_key=data.get("idempotency_key") or None,
                )
            except ServiceError as e:
                add_service_error(form, e, LAUNCH_ERROR_FIELDS)
            else:
                if created and deployment.state == D.PENDING_APPROVAL:
                    messages.warning(request, f"{deployment.name} waits for an approval: you will be notified.")
                elif created:
                    messages.success(request, f"{deployment.name} is being launched.")
                return redirect("deployments:detail", pk=deployment.pk)
    return _launch_page(request, item, project, projects, form, 400)


@org_page
@require_GET
def launch_preview(request: PageRequest, slug: str) -> HttpResponse:
    """The price, quota and placement preview for the values in the query string (the form's size, cloud and
    parameters), swapped into the launch page by htmx when they change."""
    item = _launch_item(request, slug)
    projects = _launch_projects(request, item)
    if not projects:
        raise PermissionDenied(f"You cannot launch {item.name} in any project it is published to.")
    project = _launch_project(request, projects)
    form = _launch_form(request, item, project, request.GET)
    return _page(request, "deployments/_launch_preview.html", {
        "item": item, "project": project, "preview": _preview(request, item, project, form),
    })


# --- one deployment -------------------------------------------------------------------------------------------------
def _deployment(request: PageRequest, pk: int) -> Deployment:
    return get_object_or_404(_deployments(request).select_related("blueprint_version__blueprint"), pk=pk)


def _transfer_candidates(request: PageRequest, deployment: Deployment) -> list[User]:
    """Active members who may launch in the deployment's project (org roles included), its owner left out."""
    rows = (Membership.objects.for_user(request.user).filter(live_q(), organization_id=deployment.organization_id)
            .filter(Q(project__isnull=True) | Q(project_id=deployment.project_id)).select_related("user"))
    users = {m.user.pk: m.user for m in rows
             if m.user.is_active and m.user.pk != deployment.owner_id and role_allows(m.role, "deployments.launch")}
    return sorted(users.values(), key=lambda u: u.username)


def _instance_ops(instance: Instance, can_operate: bool) -> dict[str, bool]:
    operation = instance.operation
    busy = operation is not None and operation.state in (Operation.State.PENDING, Operation.State.RUNNING)
    has_server = bool(instance.provider_server_id)
    state = instance.state
    if not can_operate:
        return {}
    return {
        "start": not busy and has_server and state == S.STOPPED,
        "stop": not busy and has_server and state == S.RUNNING,
        "reboot": not busy and has_server and state == S.RUNNING,
        "resize": not busy and has_server and state in (S.RUNNING, S.STOPPED),
        "delete": state not in (S.DELETED, S.DELETING),
        "console": has_server and state not in NO_CONSOLE,
        "resync": state != S.DELETED,
        "busy": busy,
    }


def _timeline(deployment: Deployment, instances: list[Instance], user: User) -> list[dict[str, Any]]:
    """Transitions of the instances and the provider operations started for them, newest first."""
    names = {i.pk: i.name for i in instances}
    transitions = list(
        InstanceTransition.objects.for_user(user, "deployments.view").filter(instance_id__in=list(names))
        .order_by("-detected_at", "-pk")[:TIMELINE_LIMIT]
    )
    # operations are cloud rows the deployment's viewers cannot list otherwise: those of this deployment only
    operations = list(
        Operation.objects.all_tenants().filter(organization_id=deployment.organization_id)
        .filter(Q(params__deployment_id=deployment.pk) | Q(params__instance_id__in=list(names)))
        .order_by("-created_at", "-pk")[:TIMELINE_LIMIT]
    ) if names else []
    events: list[dict[str, Any]] = [
        {"at": t.detected_at, "kind": "transition", "row": t, "instance": names.get(t.instance_id, "")}
        for t in transitions
    ] + [
        {"at": o.created_at, "kind": "operation", "row": o, "instance": names.get(o.params.get("instance_id"), "")}
        for o in operations
    ]
    events.sort(key=lambda e: e["at"], reverse=True)
    return events[:TIMELINE_LIMIT]


def _detail_context(request: PageRequest, deployment: Deployment, **forms: Any) -> dict[str, Any]:
    instances = list(
        Instance.objects.for_user(request.user, "deployments.view").filter(deployment_id=deployment.pk)
        .select_related("account", "image", "operation").order_by("role", "index")
    )
    can_operate = _can_operate(request, deployment)
    ended = deployment.state in OVER
    sizes = _sizes(deployment.organization_id) if can_operate else []
    live = [i for i in instances if i.state != S.DELETED]
    for instance in instances:
        i: Any = instance
        i.ops = _instance_ops(instance, can_operate)
        i.synced_ago = seconds_ago(instance.last_synced_at)
        i.resize_to = [p for p in sizes if p.slug != instance.size]
    ssh = [{"instance": i.name, "command": f"ssh {_login_user(i)}@{(i.public_ips or i.private_ips)[0]}",
            "public": bool(i.public_ips)} for i in live if i.public_ips or i.private_ips]
    ports: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for i in live:
        for port in i.ports or []:
            key = (port.get("port"), port.get("protocol", "tcp"), port.get("cidr", "0.0.0.0/0"))
            if i.role not in ports[key]:
                ports[key].append(i.role)
    approval = Approval.objects.for_user(request.user, "deployments.view").filter(deployment=deployment).select_related(
        "requested_by", "decided_by").first()
    prices = [i.price_per_hour for i in live if i.price_per_hour is not None]
    hourly = sum(prices, Decimal(0)) if prices else (None if ended else deployment.estimated_hourly)
    placement = deployment.placement or {}
    transfer_form = forms.get("transfer_form")
    if transfer_form is None and can_operate and not ended:
        transfer_form = TransferForm(users=_transfer_candidates(request, deployment))
    extend_form = forms.get("extend_form")
    if extend_form is None and can_operate and not ended:
        item = deployment.catalog_item
        extend_form = ExtendForm(initial={"lease_days": item.lease_days if item and item.lease_days else 7})
    return {
        "parameters": services.redacted_parameters(deployment.parameters),
        "deployment": deployment,
        "instances": instances,
        "can_operate": can_operate,
        "ended": ended,
        "ssh": ssh,
        "ports": [{"port": k[0], "protocol": k[1], "cidr": k[2], "roles": v} for k, v in sorted(
            ports.items(), key=lambda kv: (int(kv[0][0]) if str(kv[0][0]).isdigit() else 0, kv[0][1]))],
        "approval": approval,
        "hourly": hourly,
        "monthly": (hourly * HOURS_PER_MONTH).quantize(Decimal("0.01")) if hourly is not None else None,
        "placement_servers": sorted((placement.get("servers") or {}).items()),
        "placement": placement,
        "timeline": _timeline(deployment, instances, request.user),
        "can_retry": can_operate and deployment.state == D.PARTIALLY_FAILED,
        "can_cancel": can_operate and deployment.state in CANCELLABLE,
        "can_act_all": can_operate and not ended and bool(live),
        "extend_form": extend_form,
        "transfer_form": transfer_form,
        "lease_max": deployment.catalog_item.lease_max_days if deployment.catalog_item else None,
    }


@org_page
@require_GET
def deployment_detail(request: PageRequest, pk: int) -> HttpResponse:
    deployment = _deployment(request, pk)
    return _page(request, "deployments/detail.html", _detail_context(request, deployment))


@org_page
@require_GET
@never_cache
def deployment_live(request: PageRequest, pk: int) -> HttpResponse:
    """The live part of the deployment page (states, servers, timeline), fetched again by the live script when it
    missed an event."""
    deployment = _deployment(request, pk)
    return _page(request, "deployments/_live.html", _detail_context(request, deployment))


def _detail_with_errors(request: PageRequest, deployment: Deployment, **forms: Any) -> HttpResponse:
    return _page(request, "deployments/detail.html", _detail_context(request, deployment, **forms), status=400)


ACTION_DONE = {"start": "Starting", "stop": "Stopping", "reboot": "Rebooting", "delete": "Deleting",
               "resize": "Resizing"}


@org_page
@require_POST
def deployment_action(request: PageRequest, pk: int) -> HttpResponseBase:
    deployment = _deployment(request, pk)
    _require_operate(request, deployment)
    form = DeploymentActionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Unknown action.")
        return redirect("deployments:detail", pk=deployment.pk)
    action = form.cleaned_data["action"]

    try:
        if action == "resync":
            from apps.deployments.reconciler import deployment_resync

            deployment_resync(actor=request.user, deployment=deployment)
            messages.success(request, f"{deployment.name} is synced with its clouds.")
        elif action == "retry":
            retried = services.deployment_retry_failed(actor=request.user, deployment=deployment)
            messages.success(request, f"Creating {len(retried)} failed server(s) again." if retried
                             else "No failed server could be retried now (busy ones wait).")
        elif action == "cancel":
            services.deployment_cancel(actor=request.user, deployment=deployment)
            messages.success(request, f"{deployment.name} is cancelled.")
        elif action == "delete":
            services.deployment_delete(actor=request.user, deployment=deployment)
            messages.success(request, f"Deleting {deployment.name} and everything created for it.")
        else:
            names = services.deployment_action(actor=request.user, deployment=deployment, action=action)
            messages.success(request, f"{ACTION_DONE[action]} {', '.join(names)}.")
    except ValidationError as e:
        _messages_from(request, e)
    return redirect("deployments:detail", pk=deployment.pk)


def _instance(request: PageRequest, pk: int) -> Instance:
    return get_object_or_404(
        Instance.objects.for_user(request.user, "deployments.view")
        .select_related("deployment", "deployment__project", "account", "operation"), pk=pk,
    )


@org_page
@require_POST
def instance_action(request: PageRequest, pk: int) -> HttpResponseBase:
    instance = _instance(request, pk)
    deployment = instance.deployment
    _require_operate(request, deployment)
    form = InstanceActionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Unknown action.")
        return redirect("deployments:detail", pk=deployment.pk)
    action, size = form.cleaned_data["action"], form.cleaned_data.get("size") or None
    try:
        if action == "resync":
            from apps.deployments.reconciler import instance_resync

            fresh = instance_resync(actor=request.user, instance=instance)
            messages.success(request, f"{fresh.name} is synced: {fresh.get_state_display().lower()}.")
        else:

            services.instance_action(actor=request.user, instance=instance, action=action, size=size)
            messages.success(request, f"{ACTION_DONE[action]} {instance.name}"
                                      f"{f' to {size}' if action == 'resize' and size else ''}.")
    except ValidationError as e:
        _messages_from(request, e)
    return redirect(reverse("deployments:detail", kwargs={"pk": deployment.pk}) + f"#instance-{instance.pk}")


@org_page
@require_GET
@never_cache
def instance_console(request: PageRequest, pk: int) -> HttpResponseBase:
    """Opens in a new tab: the provider's console URL (noVNC), or the server's console output."""
    instance = _instance(request, pk)
    _require_operate(request, instance.deployment)

    error, output = "", ""
    try:
        console = services.instance_console(actor=request.user, instance=instance)
    except ValidationError as e:
        error = " ".join(e.messages)
    else:
        url = console.url or ""
        parts = urlsplit(url)
        if console.kind == "url" and parts.scheme in ("https", "http") and parts.netloc:
            return HttpResponseRedirect(url)
        output = console.output or ""
        if console.kind == "url":
            error = "The provider answered with a console address Skyport will not open."
    return _page(request, "deployments/console.html", {
        "instance": instance, "deployment": instance.deployment, "output": output, "error": error,
    })


@org_page
@require_POST
def deployment_extend(request: PageRequest, pk: int) -> HttpResponseBase:
    deployment = _deployment(request, pk)
    _require_operate(request, deployment)
    form = ExtendForm(request.POST)
    if form.is_valid():

        try:
            extended = services.deployment_extend(actor=request.user, deployment=deployment,
                                                  days=form.cleaned_data["lease_days"])
        except ValidationError as e:
            add_service_error(form, e)
        else:
            when = extended.lease_expires_at
            messages.success(request, f"The lease of {deployment.name} now ends {when:%Y-%m-%d %H:%M} UTC."
                             if when else f"The lease of {deployment.name} is extended.")
            return redirect("deployments:detail", pk=deployment.pk)
    return _detail_with_errors(request, deployment, extend_form=form)


@org_page
@require_POST
def deployment_transfer(request: PageRequest, pk: int) -> HttpResponseBase:
    deployment = _deployment(request, pk)
    _require_operate(request, deployment)
    candidates = _transfer_candidates(request, deployment)
    form = TransferForm(request.POST, users=candidates)
    if form.is_valid():

        new_owner = next(u for u in candidates if u.pk == form.cleaned_data["owner"])
        try:
            services.deployment_transfer(actor=request.user, deployment=deployment, new_owner=new_owner)
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"{deployment.name} now belongs to {new_owner.display_name}.")
            return redirect("deployments:detail", pk=deployment.pk)
    return _detail_with_errors(request, deployment, transfer_form=form)


# --- approvals ------------------------------------------------------------------------------------------------------
def _approvals(request: PageRequest) -> Any:
    """Approvers see their organisation's requests; everybody else only their own (as requester or owner)."""
    approvers_of = access_of(request).orgs_allowing("deployments.approve")
    return Approval.objects.for_user(request.user, "deployments.view").filter(
        Q(organization_id__in=approvers_of) | Q(requested_by_id=request.user.pk)
        | Q(deployment__owner_id=request.user.pk)
    ).select_related(
        "deployment", "deployment__catalog_item", "deployment__owner", "project", "requested_by", "decided_by")


def _decorate_approvals(request: PageRequest, rows: list[Approval]) -> list[Approval]:
    access = access_of(request)
    for approval in rows:
        a: Any = approval
        own = request.user.pk in (approval.requested_by_id, approval.deployment.owner_id)
        a.can_decide = (approval.state == Approval.State.PENDING and not own
                        and access.can_on("deployments.approve", approval))
        a.own = own
        hourly = approval.deployment.estimated_hourly
        a.monthly = (hourly * HOURS_PER_MONTH).quantize(Decimal("0.01")) if hourly is not None else None
    return rows


@org_page
@require_GET
def approvals(request: PageRequest) -> HttpResponse:
    _org_role_or_404(request, "deployments.approve")
    rows = _approvals(request).filter(organization_id=org_id(request))
    pending = _decorate_approvals(request, list(rows.filter(state=Approval.State.PENDING).order_by("created_at")))
    decided = _decorate_approvals(request, list(rows.exclude(state=Approval.State.PENDING)
                                                .order_by("-decided_at", "-created_at")[:50]))
    return _page(request, "deployments/approvals.html", {"pending": pending, "decided": decided})


@org_page
@require_GET
def approval_detail(request: PageRequest, pk: int) -> HttpResponse:
    approval = get_object_or_404(_approvals(request), pk=pk)
    return _page(request, "deployments/approval_detail.html", {
        "approval": _decorate_approvals(request, [approval])[0], "form": ApprovalDecisionForm(),
    })


@org_page
@require_POST
def approval_decide(request: PageRequest, pk: int) -> HttpResponseBase:
    approval = get_object_or_404(_approvals(request), pk=pk)
    if not access_of(request).can_on("deployments.approve", approval):
        raise PermissionDenied("Deciding launch requests needs the admin role (deployments.approve).")
    form = ApprovalDecisionForm(request.POST)
    if form.is_valid():

        approve = form.cleaned_data["decision"] == "approve"
        try:
            services.approval_decide(actor=request.user, approval=approval, approve=approve,
                                     comment=form.cleaned_data["comment"])
        except ValidationError as e:
            add_service_error(form, e)
        else:
            name = approval.deployment.name
            messages.success(request, f"{name} is approved and being launched." if approve
                             else f"{name} is rejected; {approval.requested_by.display_name} is told why.")
            return redirect(safe_next(request, request.POST.get("next"), "deployments:approvals"))
    approval = get_object_or_404(_approvals(request), pk=pk)
    return _page(request, "deployments/approval_detail.html", {
        "approval": _decorate_approvals(request, [approval])[0], "form": form,
    }, status=400)


# --- quotas ---------------------------------------------------------------------------------------------------------
def _org_projects(request: PageRequest) -> list[Project]:
    return list(Project.objects.for_user(request.user).filter(organization_id=org_id(request), is_archived=False)
                .order_by("name"))


def _org_members(request: PageRequest) -> list[User]:
    member_ids = Membership.objects.for_user(request.user).filter(live_q(), organization_id=org_id(request))
    return list(User.objects.filter(pk__in=member_ids.values("user_id"), is_active=True).order_by("username"))


def _quota_rows(request: PageRequest) -> list[dict[str, Any]]:
    """Every quota of the organisation with what is held against it: one grouped query for all of them."""
    quotas = list(Quota.objects.for_user(request.user, "quotas.manage").filter(organization_id=org_id(request))
                  .select_related("project", "user"))
    sums = list(
        QuotaReservation.objects.for_user(request.user, "quotas.manage")
        .filter(organization_id=org_id(request), released_at__isnull=True)
        .values("project_id", "user_id").order_by()
        .annotate(instances_=Sum("instances"), vcpus_=Sum("vcpus"), ram_mb_=Sum("ram_mb"), disk_gb_=Sum("disk_gb"))
    )
    fields = ("instances", "vcpus", "ram_mb", "disk_gb")

    def held(match: Any) -> dict[str, int]:
        return {f: sum(int(row[f"{f}_"] or 0) for row in sums if match(row)) for f in fields}

    rows = []
    for quota in quotas:
        if quota.project_id:
            used = held(lambda r, q=quota: r["project_id"] == q.project_id)
            scope, order = f"Project {quota.project.name}", (1, quota.project.name)  # type: ignore[union-attr]
        elif quota.user_id:
            used = held(lambda r, q=quota: r["user_id"] == q.user_id)
            scope, order = f"{quota.user.display_name} ({quota.user.username})", (2, quota.user.username)  # type: ignore[union-attr]
        else:
            used = held(lambda r: True)
            scope, order = "The whole organisation", (0, "")
        limits = []
        for (limit_field, label), field in zip(QUOTA_LIMITS, fields, strict=True):
            limit = getattr(quota, limit_field)
            limits.append({"label": label, "used": used[field], "limit": limit,
                           "percent": min(100, round(100 * used[field] / limit)) if limit else (100 if limit == 0
                                                                                              else 0),
                           "over": limit is not None and used[field] > limit})
        rows.append({"quota": quota, "scope": scope, "order": order, "limits": limits})
    rows.sort(key=lambda r: r["order"])
    return rows


def _quotas_page(request: PageRequest, form: QuotaForm | None = None, status: int = 200) -> HttpResponse:
    projects, users = _org_projects(request), _org_members(request)
    if form is None:
        initial: dict[str, Any] = {}
        raw = request.GET.get("edit", "")
        if raw.isdigit() and len(raw) < 19:
            quota = Quota.objects.for_user(request.user, "quotas.manage").filter(
                organization_id=org_id(request), pk=int(raw)).first()
            if quota is not None:
                initial = {"scope": "project" if quota.project_id else "user" if quota.user_id else "organization",
                           "project": quota.project_id, "user": quota.user_id,
                           **{f: getattr(quota, f) for f, _ in QUOTA_LIMITS}}
        form = QuotaForm(initial=initial, projects=projects, users=users)
    return _page(request, "deployments/quotas.html", {"rows": _quota_rows(request), "form": form}, status=status)


@org_page
@require_http_methods(["GET", "POST"])
def quotas(request: PageRequest) -> HttpResponse:
    _org_role_or_404(request, "quotas.manage")
    if request.method == "GET":
        return _quotas_page(request)
    projects, users = _org_projects(request), _org_members(request)
    form = QuotaForm(request.POST, projects=projects, users=users)
    if form.is_valid():
        from apps.deployments.quota_services import quota_set

        data = form.cleaned_data
        project = next((p for p in projects if p.pk == data["project"]), None)
        user = next((u for u in users if u.pk == data["user"]), None)
        try:
            quota_set(actor=request.user, organization=_organization(request), project=project, user=user,
                      **{f: data.get(f) for f, _ in QUOTA_LIMITS})
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, "The quota is saved.")
            return redirect("deployments:quotas")
    return _quotas_page(request, form, status=400)


@org_page
@require_POST
def quota_delete(request: PageRequest, pk: int) -> HttpResponseBase:
    quota = get_object_or_404(Quota.objects.for_user(request.user, "quotas.manage")
                              .filter(organization_id=org_id(request)).select_related("project", "user"), pk=pk)
    from apps.deployments.quota_services import quota_delete as delete

    label = quota.scope_label
    try:
        delete(actor=request.user, quota=quota)
    except ValidationError as e:
        _messages_from(request, e)
    else:
        messages.success(request, f"The quota {label} is cleared: no limit there now.")
    return redirect("deployments:quotas")


# --- hooks ----------------------------------------------------------------------------------------------------------
def _hooks(request: PageRequest) -> Any:
    return Hook.objects.for_user(request.user, "hooks.manage").filter(organization_id=org_id(request))


def _hooks_page(request: PageRequest, form: HookForm | None = None, status: int = 200) -> HttpResponse:
    hooks = list(_hooks(request))
    # the last deliveries of every hook in one query
    recent = (HookDelivery.objects.for_user(request.user, "hooks.manage").filter(hook_id__in=[h.pk for h in hooks])
              .annotate(rank=Window(RowNumber(), partition_by=[F("hook_id")],
                                    order_by=[F("created_at").desc(), F("pk").desc()]))
              .filter(rank__lte=DELIVERIES_PER_HOOK).select_related("deployment").order_by("hook_id", "rank"))
    by_hook: dict[int, list[HookDelivery]] = defaultdict(list)
    for delivery in recent if hooks else []:
        by_hook[delivery.hook_id].append(delivery)
    for hook in hooks:
        hook.recent = by_hook.get(hook.pk, [])  # type: ignore[attr-defined]
    return _page(request, "deployments/hooks.html", {
        "hooks": hooks, "form": form or HookForm(initial={"phase": Hook.Phase.BEFORE}),
    }, status=status)


HOOK_FIELDS = ("name", "url", "phase", "secret", "timeout_seconds", "allow_on_failure", "is_enabled")


@org_page
@require_http_methods(["GET", "POST"])
def hooks(request: PageRequest) -> HttpResponse:
    _org_role_or_404(request, "hooks.manage")
    if request.method == "GET":
        return _hooks_page(request)
    form = HookForm(request.POST)
    if form.is_valid():
        from apps.deployments.hooks import hook_create

        try:
            hook = hook_create(actor=request.user, organization=_organization(request),
                               **{f: form.cleaned_data[f] for f in HOOK_FIELDS})
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"Hook {hook.name} is added. Send it a test to check the receiver.")
            return redirect("deployments:hooks")
    return _hooks_page(request, form, status=400)


def _hook(request: PageRequest, pk: int) -> Hook:
    return get_object_or_404(_hooks(request), pk=pk)


@org_page
@require_http_methods(["GET", "POST"])
def hook_edit(request: PageRequest, pk: int) -> HttpResponse:
    hook = _hook(request, pk)
    initial = {f: getattr(hook, f) for f in HOOK_FIELDS if f != "secret"}
    form = HookForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        from apps.deployments.hooks import hook_update

        try:
            hook_update(actor=request.user, hook=hook, **{f: form.cleaned_data[f] for f in HOOK_FIELDS})
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"Hook {form.cleaned_data['name']} is saved.")
            return redirect("deployments:hooks")
    return _page(request, "deployments/hook_edit.html", {"hook": hook, "form": form},
                 status=400 if request.method == "POST" else 200)


@org_page
@require_POST
def hook_delete(request: PageRequest, pk: int) -> HttpResponseBase:
    hook = _hook(request, pk)
    from apps.deployments.hooks import hook_delete as delete

    try:
        delete(actor=request.user, hook=hook)
    except ValidationError as e:
        _messages_from(request, e)
    else:
        messages.success(request, f"Hook {hook.name} is deleted.")
    return redirect("deployments:hooks")


@org_page
@require_POST
def hook_test(request: PageRequest, pk: int) -> HttpResponseBase:
    hook = _hook(request, pk)
    from apps.deployments.hooks import hook_test as send_test

    try:
        delivery = send_test(actor=request.user, hook=hook)
    except ValidationError as e:
        _messages_from(request, e)
    else:
        code = f" (HTTP {delivery.status_code})" if delivery.status_code else ""
        if delivery.state == HookDelivery.State.DELIVERED:
            messages.success(request, f"Test delivered to {hook.name}{code}.")
        elif delivery.state == HookDelivery.State.VETOED:
            messages.warning(request, f"{hook.name} answered with a veto{code}: {delivery.message}")
        else:
            messages.error(request, f"The test to {hook.name} failed{code}: {delivery.message}")
    return redirect(reverse("deployments:hooks") + f"#hook-{hook.pk}")


# --- servers that need attention ------------------------------------------------------------------------------------
def _attention_page(request: PageRequest, forms: dict[int, AdoptForm] | None = None,
                    status: int = 200) -> HttpResponse:
    from apps.deployments.reconciler import instances_needing_attention

    instances = list(instances_needing_attention(_organization(request))[:ATTENTION_LIMIT])
    for instance in instances:
        instance.synced_ago = seconds_ago(instance.last_synced_at)  # type: ignore[attr-defined]
    servers = list(
        UnmanagedServer.objects.for_user(request.user, "clouds.view")
        .filter(organization_id=org_id(request), adopted_into__isnull=True)
        .select_related("account").order_by("account__name", "region", "name")[:ATTENTION_LIMIT]
    )
    can_adopt = org_can(request, "clouds.manage")
    projects = _org_projects(request) if can_adopt else []
    forms = forms or {}
    for server in servers:
        server.adopt_form = forms.get(server.pk) or (  # type: ignore[attr-defined]
            AdoptForm(projects=projects, prefix=f"s{server.pk}",
                      initial={"name": suggested_name(server.name or "adopted")}) if can_adopt else None)
    return _page(request, "deployments/attention.html", {
        "instances": instances, "servers": servers, "can_adopt": can_adopt,
    }, status=status)


@org_page
@require_GET
def attention(request: PageRequest) -> HttpResponse:
    _org_role_or_404(request, "clouds.view")
    return _attention_page(request)


@org_page
@require_POST
def unmanaged_adopt(request: PageRequest, pk: int) -> HttpResponseBase:
    server = get_object_or_404(UnmanagedServer.objects.for_user(request.user, "clouds.view")
                               .filter(organization_id=org_id(request), adopted_into__isnull=True), pk=pk)
    if not access_of(request).can_on("clouds.manage", server):
        raise PermissionDenied("Adopting servers needs the admin role (clouds.manage).")
    projects = _org_projects(request)
    form = AdoptForm(request.POST, projects=projects, prefix=f"s{server.pk}")
    if form.is_valid():
        from apps.deployments.reconciler import unmanaged_adopt as adopt

        project = next(p for p in projects if p.pk == form.cleaned_data["project"])
        try:
            deployment = adopt(actor=request.user, server=server, project=project, name=form.cleaned_data["name"])
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"{server} is now managed as {deployment.name}.")
            return redirect("deployments:detail", pk=deployment.pk)
    return _attention_page(request, {server.pk: form}, status=400)


# --- Profile → SSH keys ---------------------------------------------------------------------------------------------
def _ssh_keys_page(request: PageRequest, form: SshKeyForm | None = None, status: int = 200) -> HttpResponse:
    return _page(request, "accounts/ssh_keys.html", {
        "keys": list(SshKey.objects.filter(user=request.user)), "form": form or SshKeyForm(),
    }, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def ssh_keys(request: PageRequest) -> HttpResponse:
    if request.method == "GET":
        return _ssh_keys_page(request)
    form = SshKeyForm(request.POST)
    if form.is_valid():
        from apps.accounts.ssh_keys import ssh_key_add

        try:
            key = ssh_key_add(user=request.user, name=form.cleaned_data["name"],
                              public_key=form.cleaned_data["public_key"])
        except ValidationError as e:
            add_service_error(form, e)
        else:
            messages.success(request, f"Key {key.name} ({key.fingerprint}) is added; it is offered at launch.")
            return redirect("accounts:ssh-keys")
    if "PRIVATE KEY" in request.POST.get("public_key", ""):
        # a secret pasted by mistake is never sent back in the page, whichever check refused the form
        data = request.POST.copy()
        data["public_key"] = ""
        form.data = data
    return _ssh_keys_page(request, form, status=400)


@login_required
@require_POST
def ssh_key_delete(request: PageRequest, pk: int) -> HttpResponseBase:
    key = get_object_or_404(SshKey.objects.filter(user=request.user), pk=pk)
    from apps.accounts.ssh_keys import ssh_key_delete as delete

    delete(user=request.user, key=key)
    messages.success(request, f"Key {key.name} is removed. Servers launched with it keep it.")
    return redirect("accounts:ssh-keys")


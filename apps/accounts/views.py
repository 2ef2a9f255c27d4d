"""Account pages: sign-in, password, invitations, members, API tokens and notifications.

Views validate input with forms and call apps.accounts.services for every write; a ServiceError becomes
form errors, a PermissionDenied the 403 page. Rows named in a URL are looked up through scoped querysets
(404 outside the user's reach)."""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import F, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts import services, throttle
from apps.accounts.forms import (
    InvitationForm,
    InvitationSignUpForm,
    LoginForm,
    MembershipAddForm,
    MembershipEditForm,
    PasswordChangeForm,
    TokenCreateForm,
)
from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Organization, Project, User
from apps.core.access import forget_access
from apps.core.context_processors import get_frame
from apps.core.forms import add_service_error
from apps.core.middleware import client_ip
from apps.core.views import (
    PageRequest,
    access_of,
    is_partial,
    org_can,
    org_id,
    org_page,
    pending_invitations,
    safe_next,
)

NOTIFICATIONS_PAGE_SIZE = 50
MEMBERS_PAGE_SIZE = 100


# --- sign-in and password ------------------------------------------------------------------------------
@sensitive_post_parameters("password")
@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request: PageRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if request.user.is_authenticated and request.method == "GET":
        return redirect(safe_next(request, next_url))
    form = LoginForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        login_name, ip = form.cleaned_data["login"], client_ip(request)
        # counted before the password is checked, so parallel guesses cannot slip past the limit
        if throttle.count_attempt(login_name, ip) > settings.SKYPORT_LOGIN_MAX_FAILURES:
            form.add_error(None, throttle.message())
            status = 429
        else:
            user = authenticate(request, username=login_name, password=form.cleaned_data["password"])
            if user is None:
                form.add_error(None, "The username/email or password is not correct.")
            else:
                throttle.forgive(login_name, ip)
                login(request, user)
                return redirect(safe_next(request, next_url))
    return render(request, "accounts/login.html", {"form": form, "next": next_url}, status=status)


@require_POST
def logout_view(request: PageRequest) -> HttpResponse:
    from apps.core.events import send_now, session_group

    key = request.session.session_key
    logout(request)
    if key:  # the live sockets this browser opened close now, not at their next check
        send_now(session_group(key), {"type": "session.ended", "reason": "signed out"})
    messages.info(request, "You are signed out.")
    return redirect("accounts:login")


@sensitive_post_parameters("old_password", "new_password1", "new_password2")
@login_required
@require_http_methods(["GET", "POST"])
def password_change(request: PageRequest) -> HttpResponse:
    form = PasswordChangeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.user_change_password(
                user=request.user,
                old_password=form.cleaned_data["old_password"],
                new_password=form.cleaned_data["new_password1"],
            )
        except ValidationError as e:
            # the service names the current password; the password validators speak about the new one
            add_service_error(form, e, {"__all__": "new_password1"})
        else:
            # the change ended every other session of the user; this one continues
            update_session_auth_hash(request, request.user)
            messages.success(request, "Your password is changed. Other sessions were signed out.")
            return redirect("core:home")
    return render(request, "accounts/password_change.html", {"form": form})


# --- invitations ---------------------------------------------------------------------------------------
@sensitive_post_parameters("password1", "password2")
@never_cache
@require_http_methods(["GET", "POST"])
def invitation_accept(request: PageRequest, token: str) -> HttpResponse:
    invitation = services.invitation_by_secret(token)
    if invitation is None:
        reason = "This invitation link is not valid. Check that you copied all of it."
        return render(request, "accounts/invitation_invalid.html", {"reason": reason}, status=404)
    if invitation.status != "pending":
        reason = {
            "accepted": "This invitation has already been used. Sign in to reach the organisation.",
            "revoked": "This invitation was withdrawn. Ask the person who invited you for a new one.",
            "expired": "This invitation has expired. Ask the person who invited you for a new one.",
        }[invitation.status]
        return render(
            request,
            "accounts/invitation_invalid.html",
            {"reason": reason, "invitation": invitation},
            status=410,
        )
    context: dict[str, Any] = {"invitation": invitation, "token": token}
    if request.user.is_authenticated:
        context["email_matches"] = request.user.email.lower() == invitation.email.lower()
        if request.method == "POST":
            try:
                services.invitation_accept(user=request.user, secret=token)
            except ValidationError as e:
                context["errors"] = e.messages
            else:
                request.session["org_id"] = invitation.organization_id
                request.session.pop("project_id", None)
                messages.success(request, f"Welcome to {invitation.organization.name}.")
                return redirect("core:home")
        return render(request, "accounts/invitation_accept.html", context)

    context["account_exists"] = User.objects.filter(email__iexact=invitation.email).exists()
    form = InvitationSignUpForm(request.POST or None, email=invitation.email)
    if request.method == "POST" and not context["account_exists"] and form.is_valid():
        try:
            user = services.user_sign_up_from_invitation(
                secret=token,
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password1"],
                full_name=form.cleaned_data["full_name"],
            )
        except ValidationError as e:
            add_service_error(form, e, {"__all__": "password1"} if _is_password_error(e) else None)
        else:
            login(request, user, backend="apps.accounts.backends.UsernameOrEmailBackend")
            request.session["org_id"] = invitation.organization_id
            messages.success(request, f"Welcome to {invitation.organization.name}, {user.display_name}.")
            return redirect("core:home")
    context["form"] = form
    return render(request, "accounts/invitation_accept.html", context)


def _is_password_error(error: ValidationError) -> bool:
    """Django's password validators use codes starting with "password_"."""
    if hasattr(error, "error_dict"):
        return False
    return any(str(e.code or "").startswith("password") for e in error.error_list)


# --- members -------------------------------------------------------------------------------------------
def _org(request: PageRequest) -> Organization:
    return get_object_or_404(Organization.objects.for_user(request.user), pk=org_id(request))


def _org_projects(request: PageRequest) -> Any:
    return Project.objects.for_user(request.user).filter(organization_id=org_id(request)).order_by("name")


def _org_users(request: PageRequest) -> Any:
    """Active users with a membership in the current organisation (those a role can be added to)."""
    member_ids = Membership.objects.for_user(request.user).filter(organization_id=org_id(request))
    return User.objects.filter(pk__in=member_ids.values("user_id"), is_active=True).order_by("username")


def _membership(request: PageRequest, pk: int) -> Membership:
    scoped = Membership.objects.for_user(request.user).filter(organization_id=org_id(request))
    return get_object_or_404(scoped.select_related("user", "project"), pk=pk)


def _keep_own_session(request: PageRequest, membership_user_id: int) -> None:
    """A change to one's own membership ends the user's other sessions, not the one making the change."""
    if membership_user_id == request.user.pk:
        request.user.refresh_from_db(fields=["password", "session_epoch"])
        forget_access(request.user)
        update_session_auth_hash(request, request.user)


def _members_context(request: PageRequest, **forms: Any) -> dict[str, Any]:
    frame = get_frame(request)
    memberships = (
        Membership.objects.for_user(request.user)
        .filter(organization_id=org_id(request))
        .select_related("user", "project")
        .order_by(F("project__name").asc(nulls_first=True), "user__username", "role")
    )
    if frame.project is not None:
        # organisation roles hold in every project, so they stay in a project's list
        memberships = memberships.filter(Q(project__isnull=True) | Q(project=frame.project))
    page = Paginator(memberships, MEMBERS_PAGE_SIZE).get_page(request.GET.get("page"))
    can_manage = org_can(request, "members.manage")
    context: dict[str, Any] = {
        "page": page,
        "memberships": list(page.object_list),
        "can_manage": can_manage,
        "now": timezone.now(),
    }
    if can_manage:
        projects = _org_projects(request)
        context["invitations"] = list(pending_invitations(request.user, org_id(request)))
        context["add_form"] = forms.get("add_form") or MembershipAddForm(
            users=_org_users(request),
            projects=projects,
            initial={"project": frame.project.pk if frame.project else None},
        )
        context["invite_form"] = forms.get("invite_form") or InvitationForm(
            projects=projects,
            initial={"project": frame.project.pk if frame.project else None},
        )
    return context


@org_page
@require_GET
def members(request: PageRequest) -> HttpResponse:
    return render(request, "accounts/members.html", _members_context(request))


@org_page
@require_POST
def member_add(request: PageRequest) -> HttpResponse:
    if not org_can(request, "members.manage"):
        raise PermissionDenied("Adding members needs the admin role.")
    form = MembershipAddForm(request.POST, users=_org_users(request), projects=_org_projects(request))
    if form.is_valid():
        data = form.cleaned_data
        try:
            membership = services.membership_create(
                actor=request.user,
                user=data["user"],
                organization=_org(request),
                project=data["project"],
                role=data["role"],
                expires_at=data["expires_at"],
            )
        except ValidationError as e:
            add_service_error(form, e)
        else:
            where = membership.project.name if membership.project else "the organisation"
            messages.success(request, f"{membership.user.display_name} is now {membership.role} in {where}.")
            return redirect("core:members")
    return render(request, "accounts/members.html", _members_context(request, add_form=form))


@org_page
@require_http_methods(["GET", "POST"])
def member_edit(request: PageRequest, pk: int) -> HttpResponse:
    membership = _membership(request, pk)
    if not access_of(request).can_on("members.manage", membership):
        raise PermissionDenied("Changing roles needs the admin role.")
    initial = {"role": membership.role, "expires_at": membership.expires_at}
    form = MembershipEditForm(
        request.POST or None, initial=initial, project_role=membership.project_id is not None
    )
    if request.method == "POST" and form.is_valid():
        try:
            membership = services.membership_update(
                actor=request.user,
                membership=membership,
                role=form.cleaned_data["role"],
                expires_at=form.cleaned_data["expires_at"],
            )
        except ValidationError as e:
            add_service_error(form, e)
        else:
            _keep_own_session(request, membership.user_id)
            membership = _membership(request, pk)
            if is_partial(request):
                return render(
                    request,
                    "accounts/_member_row.html",
                    {"m": membership, "can_manage": True, "now": timezone.now(), "flash": True},
                )
            messages.success(request, f"{membership.user.display_name}'s membership is updated.")
            return redirect("core:members")
    context = {"m": membership, "form": form}
    template = "accounts/_member_edit_row.html" if is_partial(request) else "accounts/member_edit.html"
    return render(request, template, context)


@org_page
@require_GET
def member_row(request: PageRequest, pk: int) -> HttpResponse:
    membership = _membership(request, pk)
    return render(
        request,
        "accounts/_member_row.html",
        {"m": membership, "can_manage": org_can(request, "members.manage"), "now": timezone.now()},
    )


@org_page
@require_POST
def member_remove(request: PageRequest, pk: int) -> HttpResponse:
    membership = _membership(request, pk)
    label = f"{membership.user.display_name} ({membership.role})"
    user_id = membership.user_id
    try:
        services.membership_remove(actor=request.user, membership=membership)
    except ValidationError as e:
        for message in e.messages:
            messages.error(request, message)
    else:
        _keep_own_session(request, user_id)
        messages.success(request, f"Removed {label}.")
    return redirect("core:members")


@org_page
@require_POST
def invite(request: PageRequest) -> HttpResponse:
    if not org_can(request, "members.manage"):
        raise PermissionDenied("Inviting people needs the admin role.")
    form = InvitationForm(request.POST, projects=_org_projects(request))
    if form.is_valid():
        data = form.cleaned_data
        try:
            invitation, _secret = services.invitation_create(
                actor=request.user,
                organization=_org(request),
                email=data["email"],
                role=data["role"],
                project=data["project"],
                membership_expires_at=data["membership_expires_at"],
            )
        except ValidationError as e:
            add_service_error(form, e)
        else:
            # the secret travels only in the email; the page never shows it
            messages.success(request, f"Invitation sent to {invitation.email}.")
            return redirect("core:members")
    return render(request, "accounts/members.html", _members_context(request, invite_form=form))


@org_page
@require_POST
def invitation_revoke(request: PageRequest, pk: int) -> HttpResponse:
    scoped = Invitation.objects.for_user(request.user, "members.manage").filter(
        organization_id=org_id(request)
    )
    invitation = get_object_or_404(scoped, pk=pk)
    try:
        services.invitation_revoke(actor=request.user, invitation=invitation)
    except ValidationError as e:
        for message in e.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"Invitation for {invitation.email} revoked.")
    return redirect("core:members")


# --- API tokens ----------------------------------------------------------------------------------------
def _tokens_context(request: PageRequest, form: TokenCreateForm | None = None) -> dict[str, Any]:
    scoped = ApiToken.objects.for_user(request.user).filter(organization_id=org_id(request))
    can_review = org_can(request, "tokens.review")
    return {
        "own_tokens": list(scoped.filter(user=request.user).order_by("revoked_at", "-created_at")),
        "org_tokens": list(
            scoped.exclude(user=request.user).select_related("user").order_by("revoked_at", "-created_at")
        )
        if can_review
        else None,
        "form": form or TokenCreateForm(),
        "now": timezone.now(),
    }


@org_page
@require_GET
def tokens(request: PageRequest) -> HttpResponse:
    return render(request, "accounts/tokens.html", _tokens_context(request))


@org_page
@require_POST
def token_create(request: PageRequest) -> HttpResponse:
    form = TokenCreateForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            token, secret = services.token_create(
                actor=request.user,
                organization=_org(request),
                name=data["name"],
                scope=data["scope"],
                expires_at=timezone.now() + datetime.timedelta(days=data["expires_in_days"]),
            )
        except ValidationError as e:
            add_service_error(form, e, {"expires_at": "expires_in_days"})
        else:
            # rendered in the POST response itself (never stored, never redirected to): shown exactly once
            response = render(request, "accounts/token_created.html", {"token": token, "secret": secret})
            response["Cache-Control"] = "no-store"
            return response
    return render(request, "accounts/tokens.html", _tokens_context(request, form))


@org_page
@require_POST
def token_revoke(request: PageRequest, pk: int) -> HttpResponse:
    scoped = ApiToken.objects.for_user(request.user).filter(organization_id=org_id(request))
    token = get_object_or_404(scoped.select_related("user"), pk=pk)
    services.token_revoke(actor=request.user, token=token)
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("core:tokens")


# --- notifications -------------------------------------------------------------------------------------
@login_required
@require_GET
def notifications(request: PageRequest) -> HttpResponse:
    rows = Notification.objects.for_user(request.user).select_related("organization")
    page = Paginator(rows, NOTIFICATIONS_PAGE_SIZE).get_page(request.GET.get("page"))
    many_orgs = len(access_of(request).organization_ids) > 1
    return render(
        request,
        "accounts/notifications.html",
        {"page": page, "notifications": list(page.object_list), "many_orgs": many_orgs},
    )


@login_required
@require_POST
def notifications_read(request: PageRequest) -> HttpResponse:
    count = services.notification_mark_read(user=request.user)
    messages.success(request, f"{count} notification{'s' if count != 1 else ''} marked as read.")
    return redirect("core:notifications")

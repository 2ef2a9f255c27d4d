"""Every write of the accounts app. Keyword-only, atomic, audited, live events sent on commit."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Organization, Project, User
from apps.core import audit
from apps.core.access import forget_access
from apps.core.events import send_on_commit, user_group
from apps.core.permissions import ServiceError, require
from apps.core.roles import ORG_ROLES, PROJECT_ROLES, Role

log = logging.getLogger(__name__)

PROJECT_FIELDS = ("name", "slug", "description", "is_archived")
MEMBERSHIP_FIELDS = ("role", "expires_at")


# --- organisations and projects ---------------------------------------------------------------------------------
@transaction.atomic
def organization_create(*, actor: User | None, name: str, slug: str, admin: User | None = None) -> Organization:
    """System-level: creates an organisation and makes `admin` (or the actor) its first admin."""
    if Organization.objects.all_tenants().filter(slug=slug).exists():
        raise ServiceError({"slug": "An organisation with this slug already exists."})
    org = Organization.objects.create(name=name, slug=slug)
    first_admin = admin or actor
    if first_admin is not None:
        Membership.objects.create(user=first_admin, organization=org, role=Role.ADMIN)
    audit.record(actor=actor, verb="organization.create", obj=org, after={"name": name, "slug": slug})
    return org


@transaction.atomic
def organization_update(*, actor: User, organization: Organization, name: str) -> Organization:
    require(actor, "org.manage", organization)
    before = {"name": organization.name}
    organization.name = name
    organization.save(update_fields=["name"])
    audit.record(actor=actor, verb="organization.update", obj=organization, before=before, after={"name": name})
    return organization


@transaction.atomic
def project_create(
    *, actor: User | None, organization: Organization, name: str, slug: str, description: str = ""
) -> Project:
    if actor is not None:
        require(actor, "projects.manage", organization)
    if Project.objects.all_tenants().filter(organization=organization, slug=slug).exists():
        raise ServiceError({"slug": "This organisation already has a project with this slug."})
    project = Project.objects.create(organization=organization, name=name, slug=slug, description=description)
    audit.record(
        actor=actor, verb="project.create", obj=project, after=audit.snapshot(project, PROJECT_FIELDS)
    )
    return project


@transaction.atomic
def project_update(*, actor: User, project: Project, **changes: Any) -> Project:
    require(actor, "projects.manage", project)
    unknown = set(changes) - set(PROJECT_FIELDS)
    if unknown:
        raise ServiceError(f"Cannot change {', '.join(sorted(unknown))}.")
    if "slug" in changes and changes["slug"] != project.slug:
        clash = Project.objects.all_tenants().filter(organization_id=project.organization_id, slug=changes["slug"])
        if clash.exclude(pk=project.pk).exists():
            raise ServiceError({"slug": "This organisation already has a project with this slug."})
    before = audit.snapshot(project, PROJECT_FIELDS)
    for name, value in changes.items():
        setattr(project, name, value)
    project.save()
    audit.record(
        actor=actor, verb="project.update", obj=project, before=before,
        after=audit.snapshot(project, PROJECT_FIELDS),
    )
    return project


# --- memberships -----------------------------------------------------------------------------------------------
def _check_role_scope(role: str, project: Project | None) -> None:
    if project is None and role not in ORG_ROLES:
        raise ServiceError({"role": f"'{role}' is a project role: choose a project, or admin/manager/security."})
    if project is not None and role not in PROJECT_ROLES:
        raise ServiceError({"role": f"'{role}' is an organisation role: leave the project empty."})


def _lock_org_admins(organization_id: int) -> list[Membership]:
    """Row-lock the organisation's admin memberships (ordered by pk) before changing any of them."""
    return list(
        Membership.objects.all_tenants()
        .select_for_update()
        .filter(organization_id=organization_id, project__isnull=True, role=Role.ADMIN)
        .order_by("pk")
    )


def _ensure_admin_remains(organization_id: int, losing: Membership) -> None:
    now = timezone.now()
    admins = [m for m in _lock_org_admins(organization_id) if m.expires_at is None or m.expires_at > now]
    if losing.role == Role.ADMIN and losing.project_id is None and all(m.pk == losing.pk for m in admins):
        raise ServiceError("An organisation needs at least one admin: make somebody else admin first.")


@transaction.atomic
def membership_create(
    *,
    actor: User | None,
    user: User,
    organization: Organization,
    role: str,
    project: Project | None = None,
    expires_at: datetime.datetime | None = None,
) -> Membership:
    if actor is not None:
        require(actor, "members.manage", project or organization)
    _check_role_scope(role, project)
    if project is not None and project.organization_id != organization.pk:
        raise ServiceError({"project": "This project belongs to another organisation."})
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError({"expires_at": "The expiry must be in the future."})
    existing = Membership.objects.all_tenants().filter(user=user, organization=organization)
    existing = existing.filter(project=project) if project else existing.filter(project__isnull=True, role=role)
    if existing.exists():
        raise ServiceError({"user": f"{user.username} already has this membership: change its role instead."})
    membership = Membership.objects.create(
        user=user, organization=organization, project=project, role=role, expires_at=expires_at
    )
    forget_access(user)
    audit.record(
        actor=actor, verb="membership.create", obj=membership,
        after={"user": user.username, **audit.snapshot(membership, MEMBERSHIP_FIELDS)},
    )
    _notify_access_changed(user)
    return membership


@transaction.atomic
def membership_update(
    *, actor: User, membership: Membership, role: str | None = None, expires_at: Any = ...
) -> Membership:
    require(actor, "members.manage", membership)
    # admin rows first, then this row (the order _ensure_admin_remains locks in): two admins changing each other
    # at once queue up instead of deadlocking
    _lock_org_admins(membership.organization_id)
    membership = Membership.objects.all_tenants().select_for_update().get(pk=membership.pk)
    before = audit.snapshot(membership, MEMBERSHIP_FIELDS)
    new_role = role or membership.role
    _check_role_scope(new_role, membership.project)
    if new_role != membership.role:
        _ensure_admin_remains(membership.organization_id, membership)
        membership.role = new_role
    if expires_at is not ...:
        if expires_at is not None and expires_at <= timezone.now():
            raise ServiceError({"expires_at": "The expiry must be in the future."})
        if expires_at is not None and membership.role == Role.ADMIN:
            _ensure_admin_remains(membership.organization_id, membership)
        membership.expires_at = expires_at
        membership.expiry_handled = False
    membership.save()
    after = audit.snapshot(membership, MEMBERSHIP_FIELDS)
    audit.record(
        actor=actor, verb="membership.update", obj=membership, before=before, after=after,
        extra={"user": membership.user.username},
    )
    if before != after:
        _end_sessions(membership.user)
    return membership


@transaction.atomic
def membership_remove(*, actor: User, membership: Membership) -> None:
    require(actor, "members.manage", membership)
    _lock_org_admins(membership.organization_id)  # same lock order as membership_update
    membership = Membership.objects.all_tenants().select_for_update().get(pk=membership.pk)
    _ensure_admin_remains(membership.organization_id, membership)
    user = membership.user
    audit.record(
        actor=actor, verb="membership.remove", obj=membership,
        before={"user": user.username, **audit.snapshot(membership, MEMBERSHIP_FIELDS)},
    )
    membership.delete()
    still_member = Membership.objects.all_tenants().filter(user=user, organization_id=membership.organization_id)
    if not still_member.exists():
        # tokens issued for that organisation die with the last membership in it
        ApiToken.objects.all_tenants().filter(
            user=user, organization_id=membership.organization_id, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        # so are per-object edit grants (joining again later does not bring them back)
        from apps.catalog.permissions import object_grants_drop

        object_grants_drop(user=user, organization_id=membership.organization_id)
    _end_sessions(user)


def _end_sessions(user: User) -> None:
    """Removing a role ends the user's sessions and open websockets at once; they sign in again to the new rights."""
    User._base_manager.filter(pk=user.pk).update(session_epoch=user.session_epoch + 1)
    user.session_epoch += 1
    forget_access(user)
    send_on_commit(user_group(user.pk), {"type": "session.ended", "reason": "access changed"})


def _notify_access_changed(user: User) -> None:
    send_on_commit(user_group(user.pk), {"type": "access.changed"})


@transaction.atomic
def membership_expire_due(*, now: datetime.datetime | None = None) -> int:
    """System job: end the sessions and websockets of members whose role just expired (queries already ignore it)."""
    now = now or timezone.now()
    due = list(
        Membership.objects.all_tenants()
        .select_for_update(skip_locked=True)
        .select_related("user")
        .filter(expires_at__lte=now, expiry_handled=False)
        .order_by("pk")
    )
    for membership in due:
        Membership._base_manager.filter(pk=membership.pk).update(expiry_handled=True)
        audit.record(actor=None, verb="membership.expire", obj=membership,
                     extra={"user": membership.user.username, "role": membership.role})
        _end_sessions(membership.user)
    return len(due)


# --- users -------------------------------------------------------------------------------------------------------
@transaction.atomic
def user_deactivate(*, actor: User, user: User, organization: Organization) -> User:
    """An org admin deactivates a user who belongs to their organisation only."""
    require(actor, "members.manage", organization)
    other_orgs = Membership.objects.all_tenants().filter(user=user).exclude(organization=organization)
    if other_orgs.exists():
        raise ServiceError("This user also belongs to another organisation: remove their memberships here instead.")
    if user.pk == actor.pk:
        raise ServiceError("You cannot deactivate yourself.")
    for m in Membership.objects.all_tenants().filter(user=user, organization=organization, role=Role.ADMIN):
        _ensure_admin_remains(organization.pk, m)
    user.is_active = False
    user.save(update_fields=["is_active"])
    ApiToken.objects.all_tenants().filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    audit.record(actor=actor, verb="user.deactivate", obj=user, organization_id=organization.pk,
                 object_type="user", before={"is_active": True}, after={"is_active": False})
    _end_sessions(user)
    return user


@transaction.atomic
def user_change_password(*, user: User, old_password: str, new_password: str) -> User:
    from django.contrib.auth.password_validation import validate_password

    if not user.check_password(old_password):
        raise ServiceError({"old_password": "Your current password is not correct."})
    validate_password(new_password, user)
    user.set_password(new_password)
    user.session_epoch += 1
    user.save(update_fields=["password", "session_epoch"])
    for org_id in set(Membership.objects.all_tenants().filter(user=user).values_list("organization_id", flat=True)):
        audit.record(actor=user, verb="user.change_password", organization_id=org_id, object_type="user",
                     object_id=user.pk, object_label=user.username)
    send_on_commit(user_group(user.pk), {"type": "session.ended", "reason": "password changed"})
    return user


# --- invitations -------------------------------------------------------------------------------------------------
@transaction.atomic
def invitation_create(
    *,
    actor: User,
    organization: Organization,
    email: str,
    role: str,
    project: Project | None = None,
    membership_expires_at: datetime.datetime | None = None,
) -> tuple[Invitation, str]:
    require(actor, "members.manage", project or organization)
    _check_role_scope(role, project)
    if project is not None and project.organization_id != organization.pk:
        raise ServiceError({"project": "This project belongs to another organisation."})
    email = email.strip().lower()
    pending = Invitation.objects.all_tenants().filter(
        organization=organization, email__iexact=email, project=project,
        accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now(),
    )
    if pending.exists():
        raise ServiceError({"email": "There is already a pending invitation for this address: revoke it first."})
    secret, token_hash = Invitation.new_secret()
    invitation = Invitation.objects.create(
        organization=organization, project=project, email=email, role=role, token_hash=token_hash,
        membership_expires_at=membership_expires_at, invited_by=actor,
        expires_at=timezone.now() + datetime.timedelta(days=settings.SKYPORT_INVITATION_DAYS),
    )
    audit.record(actor=actor, verb="invitation.create", obj=invitation,
                 after={"email": email, "role": role, "project": project.slug if project else None})
    link = invitation_link(secret)
    where = f"project {project.name} of {organization.name}" if project else organization.name
    transaction.on_commit(
        lambda: send_mail(
            subject=f"You are invited to {where} on Skyport",
            message=(
                f"{actor.display_name} invited you to {where} as {role}.\n\nAccept within "
                f"{settings.SKYPORT_INVITATION_DAYS} days: {link}\n"
            ),
            from_email=None,
            recipient_list=[email],
            fail_silently=True,
        )
    )
    return invitation, secret


def invitation_link(secret: str) -> str:
    return settings.SKYPORT_PUBLIC_URL.rstrip("/") + reverse("accounts:invitation-accept", args=[secret])


@transaction.atomic
def invitation_revoke(*, actor: User, invitation: Invitation) -> Invitation:
    require(actor, "members.manage", invitation)
    if invitation.status != "pending":
        raise ServiceError(f"This invitation is {invitation.status}; only a pending one can be revoked.")
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit.record(actor=actor, verb="invitation.revoke", obj=invitation, extra={"email": invitation.email})
    return invitation


def invitation_by_secret(secret: str) -> Invitation | None:
    if not secret or len(secret) > 100:
        return None
    return (
        Invitation.objects.all_tenants()
        .select_related("organization", "project", "invited_by")
        .filter(token_hash=Invitation.hash_secret(secret))
        .first()
    )


@transaction.atomic
def invitation_accept(*, user: User, secret: str) -> Membership:
    found = invitation_by_secret(secret)
    if found is None:
        raise ServiceError("This invitation link is not valid.")
    invitation = Invitation.objects.all_tenants().select_for_update().get(pk=found.pk)
    if invitation.status != "pending":
        raise ServiceError(f"This invitation is {invitation.status}. Ask for a new one.")
    if invitation.email.lower() != user.email.lower():
        raise ServiceError("This invitation was sent to another email address.")
    inviter = invitation.invited_by
    target = invitation.project or invitation.organization
    if inviter is None or not inviter.is_active:
        raise ServiceError("The person who invited you can no longer grant access. Ask for a new invitation.")
    forget_access(inviter)
    from apps.core.access import get_access

    if not get_access(inviter).can_on("members.manage", target):
        raise ServiceError("The person who invited you can no longer grant access. Ask for a new invitation.")
    existing = Membership.objects.all_tenants().filter(user=user, organization_id=invitation.organization_id)
    if invitation.project_id:
        existing = existing.filter(project_id=invitation.project_id)
    else:
        existing = existing.filter(project__isnull=True, role=invitation.role)
    membership = existing.first()
    if membership is None:
        membership = Membership.objects.create(
            user=user, organization_id=invitation.organization_id, project_id=invitation.project_id,
            role=invitation.role, expires_at=invitation.membership_expires_at,
        )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    forget_access(user)
    audit.record(actor=user, verb="invitation.accept", obj=invitation,
                 extra={"role": invitation.role, "membership": membership.pk})
    where = invitation.project.name if invitation.project else invitation.organization.name
    notification_send(
        recipient=inviter, organization_id=invitation.organization_id, level=Notification.Level.SUCCESS,
        text=f"{user.display_name} accepted your invitation and joined {where} as {invitation.role}.",
        link=reverse("core:members"),
    )
    return membership


@transaction.atomic
def user_sign_up_from_invitation(*, secret: str, username: str, password: str, full_name: str = "") -> User:
    from django.contrib.auth.password_validation import validate_password

    invitation = invitation_by_secret(secret)
    if invitation is None or invitation.status != "pending":
        raise ServiceError("This invitation link is not valid any more.")
    if User.objects.filter(email__iexact=invitation.email).exists():
        raise ServiceError("An account with this email exists: sign in to accept the invitation.")
    if User.objects.filter(username__iexact=username).exists():
        raise ServiceError({"username": "This username is taken."})
    first, _, last = full_name.strip().partition(" ")
    user = User(username=username, email=invitation.email, first_name=first[:150], last_name=last[:150])
    validate_password(password, user)
    user.set_password(password)
    user.save()
    invitation_accept(user=user, secret=secret)
    return user


# --- API tokens --------------------------------------------------------------------------------------------------
@transaction.atomic
def token_create(
    *,
    actor: User,
    organization: Organization,
    name: str,
    scope: str = ApiToken.Scope.READ,
    expires_at: datetime.datetime | None = None,
) -> tuple[ApiToken, str]:
    require(actor, "org.view", organization)
    if scope not in ApiToken.Scope.values:
        raise ServiceError({"scope": "Choose read or write."})
    now = timezone.now()
    limit = now + datetime.timedelta(days=settings.SKYPORT_TOKEN_MAX_DAYS)
    if expires_at is None:
        expires_at = limit
    if expires_at <= now:
        raise ServiceError({"expires_at": "The expiry must be in the future."})
    if expires_at > limit:
        raise ServiceError({"expires_at": f"Tokens live at most {settings.SKYPORT_TOKEN_MAX_DAYS} days."})
    secret, prefix, key_hash = ApiToken.new_secret()
    token = ApiToken.objects.create(
        user=actor, organization=organization, name=name, scope=scope, expires_at=expires_at,
        key_prefix=prefix, key_hash=key_hash,
    )
    audit.record(actor=actor, verb="token.create", obj=token,
                 after={"name": name, "scope": scope, "expires_at": expires_at.isoformat()})
    return token, secret


@transaction.atomic
def token_revoke(*, actor: User, token: ApiToken) -> ApiToken:
    if token.user_id != actor.pk:
        require(actor, "tokens.review", token)
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit.record(actor=actor, verb="token.revoke", obj=token, extra={"owner": token.user.username})
    send_on_commit(user_group(token.user_id), {"type": "token.revoked", "token_id": token.pk})
    return token


# --- notifications -----------------------------------------------------------------------------------------------
def notification_send(
    *,
    recipient: User,
    organization_id: int,
    text: str,
    level: str = Notification.Level.INFO,
    link: str = "",
    email: bool = False,
) -> Notification:
    note = Notification.objects.create(
        recipient=recipient, organization_id=organization_id, text=text[:500], level=level, link=link[:300]
    )
    send_on_commit(
        user_group(recipient.pk),
        {
            "type": "notification.new", "id": note.pk, "organization_id": organization_id,
            "text": note.text, "level": note.level, "link": note.link,
        },
    )
    if email and recipient.email:
        transaction.on_commit(
            lambda: send_mail(f"Skyport: {text[:60]}", f"{text}\n\n{link}", None, [recipient.email],
                              fail_silently=True)
        )
    return note


def notification_mark_read(*, user: User, ids: list[int] | None = None) -> int:
    qs = Notification.objects.for_user(user).filter(read_at__isnull=True)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    count = qs.update(read_at=timezone.now())
    send_on_commit(user_group(user.pk), {"type": "notification.read"})
    return count

"""Accounts API. Scoping comes from the Tenant* base classes; every write calls apps.accounts.services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import permissions
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import services
from apps.accounts.api import filters, serializers
from apps.accounts.api import schema as _schema  # noqa: F401  (registers the token auth description)
from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Organization, Project
from apps.core.access import get_access
from apps.core.api.pagination import CreatedCursorPagination
from apps.core.api.views import (
    TenantListCreateDestroyViewSet,
    TenantReadOnlyViewSet,
    TenantViewSet,
    TokenScopePermission,
    authenticated_user,
)
from apps.core.permissions import ServiceError
from apps.core.roles import ACTIONS


class OrganizationViewSet(TenantViewSet):
    """Organisations you belong to. Renaming needs `org.manage`."""

    model = Organization
    view_action = "org.view"
    write_action = "org.manage"
    http_method_names = ["get", "patch", "head", "options"]
    serializer_class = serializers.OrganizationSerializer
    filterset_class = None

    def perform_update(self, serializer: Any) -> None:
        organization = serializer.instance
        if "name" in serializer.validated_data:
            organization = services.organization_update(
                actor=self.user, organization=organization, name=serializer.validated_data["name"]
            )
        serializer.instance = organization


class ProjectViewSet(TenantViewSet):
    """Projects you can see. Creating and changing them needs `projects.manage` in their organisation."""

    model = Project
    view_action = "projects.view"
    write_action = "projects.manage"
    http_method_names = ["get", "post", "patch", "head", "options"]
    filterset_class = filters.ProjectFilter

    def get_serializer_class(self) -> Any:
        if self.action == "partial_update":
            return serializers.ProjectUpdateSerializer
        return serializers.ProjectSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = services.project_create(actor=self.user, **serializer.validated_data)

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = services.project_update(
            actor=self.user, project=serializer.instance, **serializer.validated_data
        )


class MembershipViewSet(TenantViewSet):
    """Who holds which role where. Changes need `members.manage`; new people join through invitations."""

    model = Membership
    view_action = "members.view"
    write_action = "members.manage"
    filterset_class = filters.MembershipFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("user")

    def get_serializer_class(self) -> Any:
        if self.action == "partial_update":
            return serializers.MembershipUpdateSerializer
        return serializers.MembershipSerializer

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = services.membership_create(actor=self.user, **serializer.validated_data)

    def perform_update(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = services.membership_update(
            actor=self.user,
            membership=serializer.instance,
            role=data.get("role"),
            expires_at=data.get("expires_at", ...),
        )

    def perform_destroy(self, instance: Membership) -> None:
        services.membership_remove(actor=self.user, membership=instance)


class InvitationViewSet(TenantListCreateDestroyViewSet):
    """Invitations of your organisations (needs `members.manage`). DELETE revokes a pending invitation."""

    model = Invitation
    view_action = "members.manage"
    write_action = "members.manage"
    filterset_class = filters.InvitationFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("invited_by", "accepted_by")

    def get_serializer_class(self) -> Any:
        if self.action == "create":
            return serializers.InvitationCreatedSerializer
        return serializers.InvitationSerializer

    def perform_create(self, serializer: Any) -> None:
        invitation, secret = services.invitation_create(actor=self.user, **serializer.validated_data)
        # the link carries the secret: it is in this response and the email, and stored nowhere
        serializer.context["accept_url"] = services.invitation_link(secret)
        serializer.instance = invitation

    def perform_destroy(self, instance: Invitation) -> None:
        services.invitation_revoke(actor=self.user, invitation=instance)

    @extend_schema(
        request=serializers.InvitationAcceptSerializer,
        responses={200: serializers.MembershipSerializer},
        description="Accept an invitation sent to your email address; answers the membership it gave you.",
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="accept",
        serializer_class=serializers.InvitationAcceptSerializer,
        permission_classes=[permissions.IsAuthenticated, TokenScopePermission],
        filterset_class=None,
        pagination_class=None,
    )
    def accept(self, request: Request) -> Response:
        payload = serializers.InvitationAcceptSerializer(
            data=request.data, context=self.get_serializer_context()
        )
        payload.is_valid(raise_exception=True)
        secret = payload.validated_data["token"]
        token = request.auth if isinstance(request.auth, ApiToken) else None
        if token is not None:
            # a token acts in its own organisation only, joining another one included
            invitation = services.invitation_by_secret(secret)
            if invitation is not None and invitation.organization_id != token.organization_id:
                raise ServiceError(
                    "This invitation is for another organisation than your token's: accept it in the portal, "
                    "signed in."
                )
        membership = services.invitation_accept(user=self.user, secret=secret)
        return Response(
            serializers.MembershipSerializer(membership, context=self.get_serializer_context()).data
        )


class ApiTokenViewSet(TenantListCreateDestroyViewSet):
    """Your API tokens; with `tokens.review`, every token of the organisation. DELETE revokes."""

    model = ApiToken
    write_action = "tokens.review"
    filterset_class = filters.ApiTokenFilter

    def optimize(self, qs: Any) -> Any:
        return qs.select_related("user")

    def write_allowed(self, obj: Any) -> bool:
        # everyone manages their own tokens; reviewers the organisation's
        return obj.user_id == self.user.pk or super().write_allowed(obj)

    def get_serializer_class(self) -> Any:
        if self.action == "create":
            return serializers.ApiTokenCreatedSerializer
        return serializers.ApiTokenSerializer

    def perform_create(self, serializer: Any) -> None:
        token, secret = services.token_create(actor=self.user, **serializer.validated_data)
        serializer.context["secret"] = secret  # returned once, in this response only
        serializer.instance = token

    def perform_destroy(self, instance: ApiToken) -> None:
        services.token_revoke(actor=self.user, token=instance)


class NotificationViewSet(TenantReadOnlyViewSet):
    """Your own notifications, newest first."""

    model = Notification
    write_action = "org.view"
    serializer_class = serializers.NotificationSerializer
    filterset_class = filters.NotificationFilter
    pagination_class = CreatedCursorPagination

    @extend_schema(
        request=serializers.NotificationMarkReadSerializer,
        responses={200: serializers.MarkedSerializer},
        description="Mark your notifications read: the ones listed in `ids`, or all of them.",
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="mark-read",
        serializer_class=serializers.NotificationMarkReadSerializer,
        filterset_class=None,
        pagination_class=None,
    )
    def mark_read(self, request: Request) -> Response:
        payload = serializers.NotificationMarkReadSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        count = services.notification_mark_read(user=self.user, ids=payload.validated_data.get("ids"))
        return Response({"marked": count})


class MeView(APIView):
    """Who you are, where you belong and what you may do there (narrowed to the token's organisation)."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(responses=serializers.MeSerializer)
    def get(self, request: Request) -> Response:
        user = authenticated_user(request)
        access = get_access(user)
        token = request.auth if isinstance(request.auth, ApiToken) else None
        organizations = [
            {
                "id": org.pk,
                "name": org.name,
                "slug": org.slug,
                "roles": sorted(access.org_roles.get(org.pk, ())),
                "actions": [a for a in ACTIONS if access.can(a, organization_id=org.pk)],
            }
            for org in Organization.objects.for_user(user)
        ]
        projects = [
            {
                "id": project.pk,
                "organization": project.organization_id,
                "name": project.name,
                "slug": project.slug,
                "role": access.project_roles.get(project.pk, (None, None))[1],
                "actions": [
                    a
                    for a in ACTIONS
                    if access.can(a, organization_id=project.organization_id, project_id=project.pk)
                ],
            }
            for project in Project.objects.for_user(user)
        ]
        body = {
            "user": {
                "id": user.pk,
                "username": user.username,
                "email": user.email,
                "display_name": user.display_name,
            },
            "authenticated_by": "token" if token else "session",
            "token": (
                {
                    "id": token.pk,
                    "name": token.name,
                    "organization": token.organization_id,
                    "scope": token.scope,
                    "expires_at": token.expires_at,
                }
                if token
                else None
            ),
            "organizations": organizations,
            "projects": projects,
        }
        return Response(serializers.MeSerializer(body).data)

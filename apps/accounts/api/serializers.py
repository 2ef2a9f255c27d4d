"""Serializers of the accounts API. They validate and shape data; writes happen in apps.accounts.services."""

from __future__ import annotations

from typing import Any

from django.utils.text import slugify
from rest_framework import serializers

from apps.accounts.models import ApiToken, Invitation, Membership, Notification, Organization, Project, User
from apps.core.api.serializers import (
    ScopedPrimaryKeyRelatedField,
    ScopedSlugRelatedField,
    StrictSerializer,
    TenantModelSerializer,
    request_user,
)
from apps.core.roles import Role


def users_sharing_an_organisation(user: Any) -> Any:
    """Users the requester can see as members (through memberships visible to them)."""
    visible = Membership.objects.for_user(user).values("user_id")
    return User.objects.filter(pk__in=visible, is_active=True)


def username_field(**kwargs: Any) -> ScopedSlugRelatedField:
    return ScopedSlugRelatedField(
        slug_field="username", queryset_for=users_sharing_an_organisation, model=User, **kwargs
    )


# computed states, named in SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] so the schema gives them stable names
INVITATION_STATES = ["pending", "accepted", "revoked", "expired"]
TOKEN_STATES = ["active", "revoked", "expired"]


class UsernameReadField(serializers.SlugRelatedField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "Username.")
        super().__init__(slug_field="username", read_only=True, **kwargs)


class ShownOnceField(serializers.CharField):
    """A secret shown in one response only. The view hands it over in the serializer context under `context_key`:
    it is stored nowhere, not even on the model instance."""

    def __init__(self, *, context_key: str, **kwargs: Any) -> None:
        self.context_key = context_key
        super().__init__(read_only=True, **kwargs)

    def get_attribute(self, instance: Any) -> str:
        return self.context[self.context_key]


# --- organisations and projects -----------------------------------------------------------------------------
class OrganizationSerializer(TenantModelSerializer):
    """An organisation you belong to."""

    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "is_active", "created_at"]
        read_only_fields = ["id", "slug", "is_active", "created_at"]


class ProjectSerializer(TenantModelSerializer):
    """A project of an organisation."""

    organization = ScopedPrimaryKeyRelatedField(Organization, help_text="Id of the organisation.")
    slug = serializers.SlugField(
        max_length=50,
        required=False,
        help_text="Unique in the organisation; derived from the name when left out.",
    )

    class Meta:
        model = Project
        fields = ["id", "organization", "name", "slug", "description", "is_archived", "created_at"]
        read_only_fields = ["id", "is_archived", "created_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("slug"):
            attrs["slug"] = slugify(attrs.get("name", ""))[:50]
            if not attrs["slug"]:
                raise serializers.ValidationError(
                    {"slug": ["Give a slug: none can be derived from this name."]}
                )
        return attrs


class ProjectUpdateSerializer(TenantModelSerializer):
    """The fields of a project that can change."""

    organization: serializers.PrimaryKeyRelatedField[Organization] = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Project
        fields = ["id", "organization", "name", "slug", "description", "is_archived", "created_at"]
        read_only_fields = ["id", "organization", "created_at"]


# --- memberships --------------------------------------------------------------------------------------------
class MembershipSerializer(TenantModelSerializer):
    """A role of a user in an organisation (no project) or in one of its projects."""

    # MembershipUpdateSerializer makes these read-only: typed as the base class both variants share
    user: serializers.SlugRelatedField[User] = username_field(
        help_text="Username of somebody who already belongs to the organisation."
    )
    user_display_name = serializers.CharField(source="user.display_name", read_only=True)
    organization: serializers.PrimaryKeyRelatedField[Organization] = ScopedPrimaryKeyRelatedField(
        Organization,
        required=False,
        help_text="Id of the organisation; may be left out when `project` is given.",
    )
    project: serializers.PrimaryKeyRelatedField[Project] = ScopedPrimaryKeyRelatedField(
        Project,
        required=False,
        allow_null=True,
        help_text="Id of the project for a project role; null for an organisation role.",
    )
    role = serializers.ChoiceField(choices=Role.choices)
    is_expired = serializers.BooleanField(read_only=True)

    class Meta:
        model = Membership
        fields = [
            "id",
            "user",
            "user_display_name",
            "organization",
            "project",
            "role",
            "expires_at",
            "is_expired",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        organization, project = attrs.get("organization"), attrs.get("project")
        if organization is None:
            if project is None:
                raise serializers.ValidationError({"organization": ["This field is required."]})
            organization = attrs["organization"] = project.organization
        if project is not None and project.organization_id != organization.pk:
            raise serializers.ValidationError({"project": ["This project belongs to another organisation."]})
        user = attrs["user"]
        belongs = Membership.objects.for_user(request_user(self.context)).filter(
            user=user, organization=organization
        )
        if not belongs.exists():
            raise serializers.ValidationError(
                {
                    "user": [
                        f"{user.username} is not a member of {organization.name}: invite them instead "
                        "(POST /api/v1/invitations/)."
                    ]
                }
            )
        return attrs


class MembershipUpdateSerializer(MembershipSerializer):
    """The role and expiry of a membership."""

    user = UsernameReadField()
    organization = serializers.PrimaryKeyRelatedField(read_only=True)
    project = serializers.PrimaryKeyRelatedField(read_only=True)
    role = serializers.ChoiceField(choices=Role.choices, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return attrs


# --- invitations --------------------------------------------------------------------------------------------
class InvitationSerializer(TenantModelSerializer):
    """An invitation to join an organisation or one of its projects."""

    organization = ScopedPrimaryKeyRelatedField(
        Organization,
        required=False,
        help_text="Id of the organisation; may be left out when `project` is given.",
    )
    project = ScopedPrimaryKeyRelatedField(Project, required=False, allow_null=True)
    role = serializers.ChoiceField(choices=Role.choices)
    invited_by = UsernameReadField()
    accepted_by = UsernameReadField()
    status = serializers.ChoiceField(choices=INVITATION_STATES, read_only=True)

    class Meta:
        model = Invitation
        fields = [
            "id",
            "organization",
            "project",
            "email",
            "role",
            "membership_expires_at",
            "status",
            "invited_by",
            "created_at",
            "expires_at",
            "accepted_at",
            "accepted_by",
            "revoked_at",
        ]
        read_only_fields = [
            "id",
            "invited_by",
            "created_at",
            "expires_at",
            "accepted_at",
            "accepted_by",
            "revoked_at",
        ]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        organization, project = attrs.get("organization"), attrs.get("project")
        if organization is None:
            if project is None:
                raise serializers.ValidationError({"organization": ["This field is required."]})
            attrs["organization"] = project.organization
        elif project is not None and project.organization_id != organization.pk:
            raise serializers.ValidationError({"project": ["This project belongs to another organisation."]})
        return attrs


class InvitationCreatedSerializer(InvitationSerializer):
    """A new invitation, with its accept link (shown this once)."""

    accept_url = ShownOnceField(
        context_key="accept_url",
        help_text="The link the invitee opens. Shown in this response only; it is also emailed.",
    )

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "accept_url"]


class InvitationAcceptSerializer(StrictSerializer):
    """The secret part of an invitation link."""

    token = serializers.CharField(max_length=100, help_text="The last part of the invitation link.")


# --- API tokens ---------------------------------------------------------------------------------------------
class ApiTokenSerializer(TenantModelSerializer):
    """An API token. Only its prefix identifies it; the secret is never shown again."""

    organization = ScopedPrimaryKeyRelatedField(
        Organization, help_text="Id of the organisation the token works in (one per token)."
    )
    user = UsernameReadField()
    scope = serializers.ChoiceField(choices=ApiToken.Scope.choices, default=ApiToken.Scope.READ)
    status = serializers.ChoiceField(choices=TOKEN_STATES, read_only=True)

    class Meta:
        model = ApiToken
        # never the key hash: only the prefix identifies a token
        fields = [
            "id",
            "name",
            "organization",
            "user",
            "key_prefix",
            "scope",
            "status",
            "expires_at",
            "last_used_at",
            "last_used_ip",
            "revoked_at",
            "created_at",
        ]
        read_only_fields = [
            "id",
            "user",
            "key_prefix",
            "last_used_at",
            "last_used_ip",
            "revoked_at",
            "created_at",
        ]
        extra_kwargs = {"expires_at": {"help_text": "Defaults to the longest lifetime allowed (365 days)."}}


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    """A new API token, with its secret (shown this once)."""

    secret = ShownOnceField(
        context_key="secret", help_text="The token itself. Shown in this response only: store it now."
    )

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "secret"]


# --- notifications ------------------------------------------------------------------------------------------
class NotificationSerializer(TenantModelSerializer):
    """A notification for you."""

    organization: serializers.PrimaryKeyRelatedField[Organization] = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Notification
        fields = ["id", "organization", "level", "text", "link", "read_at", "created_at"]
        read_only_fields = fields


class NotificationMarkReadSerializer(StrictSerializer):
    """Which notifications to mark read."""

    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        max_length=1000,
        help_text="Notifications to mark read; leave out to mark every unread notification read.",
    )


class MarkedSerializer(serializers.Serializer):
    """How many notifications were marked read."""

    marked = serializers.IntegerField(help_text="How many notifications changed from unread to read.")


# --- me -----------------------------------------------------------------------------------------------------
class MeUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    display_name = serializers.CharField()


class MeTokenSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    organization = serializers.IntegerField()
    scope = serializers.ChoiceField(choices=ApiToken.Scope.choices)
    expires_at = serializers.DateTimeField(allow_null=True)


class MeOrganizationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    roles = serializers.ListField(
        child=serializers.CharField(), help_text="Roles held in the organisation itself."
    )
    actions = serializers.ListField(
        child=serializers.CharField(),
        help_text="Actions you may take somewhere in the organisation, through an organisation role or a "
        "project role in one of its projects; `projects[].actions` says which apply in each project.",
    )


class MeProjectSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    organization = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    role = serializers.CharField(
        allow_null=True, help_text="Project role, or null when reached by an org role."
    )
    actions = serializers.ListField(
        child=serializers.CharField(), help_text="Actions allowed in the project."
    )


class MeSerializer(serializers.Serializer):
    """The signed-in user, their organisations and projects, and what they may do there."""

    user = MeUserSerializer()
    authenticated_by = serializers.ChoiceField(choices=["session", "token"])
    token = MeTokenSerializer(allow_null=True, help_text="The token used for this request, if any.")
    organizations = MeOrganizationSerializer(many=True)
    projects = MeProjectSerializer(many=True)

from django.urls import path

from apps.accounts import views as account_views
from apps.core import views

app_name = "core"
urlpatterns = [
    path("", views.home, name="home"),
    path("home/<slug:persona>/", views.persona_home, name="persona"),
    path("org/switch/", views.org_switch, name="org-switch"),
    path("project/switch/", views.project_switch, name="project-switch"),
    path("org/members/", account_views.members, name="members"),
    path("org/members/add/", account_views.member_add, name="member-add"),
    path("org/members/<int:pk>/edit/", account_views.member_edit, name="member-edit"),
    path("org/members/<int:pk>/row/", account_views.member_row, name="member-row"),
    path("org/members/<int:pk>/remove/", account_views.member_remove, name="member-remove"),
    path("org/invitations/", account_views.invite, name="invite"),
    path("org/invitations/<int:pk>/revoke/", account_views.invitation_revoke, name="invitation-revoke"),
    path("tokens/", account_views.tokens, name="tokens"),
    path("tokens/new/", account_views.token_create, name="token-create"),
    path("tokens/<int:pk>/revoke/", account_views.token_revoke, name="token-revoke"),
    path("notifications/", account_views.notifications, name="notifications"),
    path("notifications/read/", account_views.notifications_read, name="notifications-read"),
    path("audit/", views.audit, name="audit"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
]

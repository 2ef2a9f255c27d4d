from django.urls import path

from apps.deployments import views

app_name = "deployments"
urlpatterns = [
    # the list and the consumers' pages
    path("", views.deployment_list, name="list"),
    path("rows/", views.deployment_rows, name="rows"),
    path("bulk/", views.deployment_bulk, name="bulk"),
    path("launch/<slug:slug>/", views.launch, name="launch"),
    path("launch/<slug:slug>/preview/", views.launch_preview, name="launch-preview"),
    path("<int:pk>/", views.deployment_detail, name="detail"),
    path("<int:pk>/live/", views.deployment_live, name="live"),
    path("<int:pk>/action/", views.deployment_action, name="action"),
    path("<int:pk>/extend/", views.deployment_extend, name="extend"),
    path("<int:pk>/transfer/", views.deployment_transfer, name="transfer"),
    path("instances/<int:pk>/action/", views.instance_action, name="instance-action"),
    path("instances/<int:pk>/console/", views.instance_console, name="console"),
    # organisation roles
    path("approvals/", views.approvals, name="approvals"),
    path("approvals/<int:pk>/", views.approval_detail, name="approval-detail"),
    path("approvals/<int:pk>/decide/", views.approval_decide, name="approval-decide"),
    path("quotas/", views.quotas, name="quotas"),
    path("quotas/<int:pk>/delete/", views.quota_delete, name="quota-delete"),
    path("hooks/", views.hooks, name="hooks"),
    path("hooks/<int:pk>/edit/", views.hook_edit, name="hook-edit"),
    path("hooks/<int:pk>/delete/", views.hook_delete, name="hook-delete"),
    path("hooks/<int:pk>/test/", views.hook_test, name="hook-test"),
    path("attention/", views.attention, name="attention"),
    path("unmanaged/<int:pk>/adopt/", views.unmanaged_adopt, name="adopt"),
]

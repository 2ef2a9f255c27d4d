from django.urls import path

from apps.catalog import views

app_name = "catalog"
urlpatterns = [
    # the consumers' catalog
    path("", views.browse, name="browse"),
    path("items/<int:pk>/", views.item_detail, name="item-detail"),
    # images
    path("images/", views.images, name="images"),
    path("images/import/", views.image_import, name="image-import"),
    path("images/<int:pk>/", views.image_detail, name="image-detail"),
    path("images/<int:pk>/edit/", views.image_edit, name="image-edit"),
    path("images/<int:pk>/delete/", views.image_delete, name="image-delete"),
    path("images/<int:pk>/row/", views.image_row, name="image-row"),
    path("images/<int:pk>/push/", views.image_push, name="image-push"),
    path("images/<int:pk>/approve/", views.image_approve, name="image-approve"),
    path("images/<int:pk>/revoke/", views.image_revoke, name="image-revoke"),
    path("images/<int:pk>/share/", views.image_share, name="image-share"),
    path("images/<int:pk>/editors/", views.image_editors, name="image-editors"),
    path("images/<int:pk>/editors/remove/", views.image_editor_remove, name="image-editor-remove"),
    path("shares/<int:pk>/remove/", views.share_remove, name="share-remove"),
    path("copies/<int:pk>/row/", views.copy_row, name="copy-row"),
    path("copies/<int:pk>/retry/", views.copy_retry, name="copy-retry"),
    path("approvals/", views.approvals, name="approvals"),
    # hardware profiles
    path("profiles/", views.profiles, name="profiles"),
    path("profiles/new/", views.profile_create, name="profile-create"),
    path("profiles/<int:pk>/edit/", views.profile_edit, name="profile-edit"),
    path("profiles/<int:pk>/delete/", views.profile_delete, name="profile-delete"),
    # blueprints
    path("blueprints/", views.blueprints, name="blueprints"),
    path("blueprints/new/", views.blueprint_create, name="blueprint-create"),
    path("blueprints/validate/", views.blueprint_validate, name="blueprint-validate"),
    path("blueprints/<int:pk>/", views.blueprint_editor, name="blueprint-editor"),
    path("blueprints/<int:pk>/rename/", views.blueprint_rename, name="blueprint-rename"),
    path("blueprints/<int:pk>/editors/", views.blueprint_editors, name="blueprint-editors"),
    path("blueprints/<int:pk>/editors/remove/", views.blueprint_editor_remove, name="blueprint-editor-remove"),
    path("blueprints/versions/<int:pk>/", views.blueprint_version, name="blueprint-version"),
    # catalog management
    path("manage/", views.items, name="items"),
    path("manage/new/", views.item_create, name="item-create"),
    path("manage/<int:pk>/edit/", views.item_edit, name="item-edit"),
    path("manage/<int:pk>/enable/", views.item_enable, name="item-enable"),
    path("manage/<int:pk>/delete/", views.item_delete, name="item-delete"),
]

from django.urls import path

from apps.clouds import views

app_name = "clouds"
urlpatterns = [
    path("", views.accounts, name="accounts"),
    path("add/", views.account_add, name="account-add"),
    path("<int:pk>/", views.account_detail, name="account-detail"),
    path("<int:pk>/edit/", views.account_edit, name="account-edit"),
    path("<int:pk>/rotate/", views.account_rotate, name="account-rotate"),
    path("<int:pk>/sync/", views.account_sync, name="account-sync"),
    path("<int:pk>/deactivate/", views.account_deactivate, name="account-deactivate"),
    path("flavors/<int:pk>/price/", views.flavor_price, name="flavor-price"),
    path("grants/", views.grants, name="grants"),
    path("grants/<int:pk>/revoke/", views.grant_revoke, name="grant-revoke"),
    path("access-review/", views.access_review, name="access-review"),
    path("access-review/export.csv", views.access_review_export, name="access-review-export"),
]

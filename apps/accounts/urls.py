from django.urls import path

from apps.accounts import views
from apps.deployments import views as deployment_views

app_name = "accounts"
urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("password/", views.password_change, name="password-change"),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation-accept"),
    path("ssh-keys/", deployment_views.ssh_keys, name="ssh-keys"),
    path("ssh-keys/<int:pk>/delete/", deployment_views.ssh_key_delete, name="ssh-key-delete"),
]

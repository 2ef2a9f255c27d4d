import pytest
from django.test import RequestFactory
from django.views.defaults import server_error

from apps.accounts import services
from apps.accounts.models import Notification


@pytest.mark.django_db
class TestNotifications:
    def test_inbox_lists_own_and_marks_all_read(self, client_as, connor, vera, acme):
        services.notification_send(
            recipient=connor,
            organization_id=acme.pk,
            text="Deployment web-1 is running",
            link="/home/consumer/",
        )
        services.notification_send(
            recipient=connor, organization_id=acme.pk, text="Bad link", link="javascript:alert(1)"
        )
        services.notification_send(recipient=vera, organization_id=acme.pk, text="For vera only")
        client = client_as(connor)
        html = client.get("/notifications/").content.decode()
        assert "Deployment web-1 is running" in html and "For vera only" not in html
        assert '<a href="/home/consumer/">Deployment web-1 is running</a>' in html
        assert "javascript:" not in html
        assert client.get("/notifications/read/").status_code == 405
        assert client.post("/notifications/read/").status_code == 302
        assert not Notification.objects.for_user(connor).filter(read_at__isnull=True).exists()
        assert Notification.objects.for_user(vera).filter(read_at__isnull=True).count() == 1


@pytest.mark.django_db
class TestErrorPages:
    def test_404_page(self, client_as, sam):
        response = client_as(sam).get("/no/such/page/")
        assert response.status_code == 404
        html = response.content.decode()
        assert "Nothing here" in html and "Traceback" not in html and "urlpatterns" not in html

    def test_403_page(self, client_as, vera, connor, web):
        from apps.accounts.models import Membership

        m = Membership.objects.all_tenants().get(user=connor, project=web)
        response = client_as(vera).post(f"/org/members/{m.pk}/edit/", {"role": "viewer"})
        assert response.status_code == 403
        assert "You are not allowed to do this" in response.content.decode()

    def test_404_for_anonymous_visitors(self, client_as, personas):
        response = client_as().get("/no/such/page/")
        assert response.status_code == 404
        assert "Nothing here" in response.content.decode()

    def test_expired_form_page(self, personas):
        from django.test import Client

        response = Client(enforce_csrf_checks=True).post(
            "/accounts/login/", {"login": "sam", "password": "x"}
        )
        assert response.status_code == 403
        assert "This form has expired" in response.content.decode()

    def test_500_page_stands_alone(self):
        response = server_error(RequestFactory().get("/"))
        assert response.status_code == 500
        html = response.content.decode()
        assert "Something went wrong" in html and "Traceback" not in html

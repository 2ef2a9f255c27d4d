"""Inputs that once slipped through: options that steer the secret elsewhere or hide one, absurd ids and nesting."""

from __future__ import annotations

import pytest

from apps.clouds import services
from apps.clouds.models import CloudAccount
from tests.clouds.accounts_world import DBS

pytestmark = pytest.mark.django_db(databases=DBS)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"driver_kwargs": {"host": "127.0.0.1", "port": 9, "secure": False}}, "decides where the credentials"),
        ({"verify": False}, "decides where the credentials"),
        ({"auth": {"password": "hunter2-secret"}}, "looks like a secret"),
        ({"ex_force_auth_url": "http://10.0.0.1/"}, "looks like a secret or an address"),
        ({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}, "nest at most"),
        ({"blob": "x" * 9000}, "at most 8192 bytes"),
    ],
)
def test_options_cannot_steer_or_hide_secrets(api, sam, acme, east, options, message):
    before = CloudAccount.objects.all_tenants().get(pk=east.pk).options
    response = api(sam).patch(f"/api/v1/cloud-accounts/{east.pk}/", {"options": options}, format="json")
    assert response.status_code == 400, response.content
    assert message in str(response.json()["error"]), response.json()
    assert "hunter2" not in response.content.decode()
    assert CloudAccount.objects.all_tenants().get(pk=east.pk).options == before


def test_changing_driver_arguments_needs_the_credentials_again(sam, east):
    with pytest.raises(services.ServiceError, match="credentials entered again"):
        services.cloud_account_update(actor=sam, account=east, options={"provider": "linode"})


@pytest.mark.parametrize("path", ["cloud-accounts/?organization=", "cloud-grants/?account=", "flavors/?account="])
def test_huge_ids_in_filters_are_a_400(api, sam, path):
    response = api(sam).get(f"/api/v1/{path}{'9' * 30}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_deeply_nested_json_body_is_a_400(api, sam):
    body = "[" * 100_000 + "]" * 100_000
    response = api(sam).post("/api/v1/projects/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_request"


def test_deeply_nested_options_in_the_page_form_is_a_form_error(client, sam, east):
    client.force_login(sam)
    before = CloudAccount.objects.all_tenants().get(pk=east.pk).options
    response = client.post(f"/clouds/{east.pk}/edit/", {"name": east.name, "options": "[" * 5000 + "]" * 5000})
    assert response.status_code == 400  # the form again, with the error
    assert "at most 8192 characters" in response.content.decode()
    assert CloudAccount.objects.all_tenants().get(pk=east.pk).options == before


def test_idempotency_keys_belong_to_one_organisation(sam, mallory, acme, globex, east):
    from apps.clouds.operations import operation_start
    from tests.clouds.accounts_world import connect

    theirs = connect(mallory, globex, "globex-cloud")
    params = {"name": "web-1", "image_id": "x", "size_id": "y"}
    ours = operation_start(account=east, region=None, kind="delete_server", params=params, idempotency_key="k-1")
    other = operation_start(account=theirs, region=None, kind="delete_server", params=params, idempotency_key="k-1")
    assert other.pk != ours.pk and other.organization_id == globex.pk
    again = operation_start(account=east, region=None, kind="delete_server", params=params, idempotency_key="k-1")
    assert again.pk == ours.pk


def test_generic_libcloud_provider_that_cannot_tag_creates_nothing():
    from apps.clouds.drivers.base import CreateServer, InvalidRequestError
    from apps.clouds.drivers.libcloud_driver import LibcloudDriver

    driver = LibcloudDriver(credentials={"key": "0"}, options={"provider": "dummy"})
    before = len(driver.list_servers())
    with pytest.raises(InvalidRequestError, match="cannot tag a server"):
        driver.create_server(CreateServer(name="x", image_id="1", size_id="1", tags={"skyport:operation": "7"}))
    assert len(driver.list_servers()) == before


def test_an_archived_project_cannot_be_granted(sam, web, east):
    from apps.accounts import services as account_services
    from apps.clouds.models import CloudGrant

    account_services.project_update(actor=sam, project=web, is_archived=True)
    before = CloudGrant.objects.all_tenants().count()
    with pytest.raises(services.ServiceError, match="archived"):
        services.grant_create(actor=sam, account=east, project=web)
    assert CloudGrant.objects.all_tenants().count() == before

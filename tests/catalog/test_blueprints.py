"""Blueprints: YAML validation with line-numbered issues, immutable versions, edit grants and the preview of where
each instance would run."""

from __future__ import annotations

import textwrap
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied

from apps.accounts.models import Membership, User
from apps.catalog.blueprints import (
    BlueprintIssue,
    blueprint_create,
    blueprint_grant_manage,
    blueprint_preview,
    blueprint_revoke_manage,
    blueprint_update,
    blueprint_version_save,
    parameter_values,
    render_user_data,
    validate_blueprint,
)
from apps.catalog.models import Blueprint, BlueprintVersion, ImageCopy
from apps.core.models import AuditEvent
from apps.core.permissions import ServiceError
from tests.catalog.test_profiles import make_account, make_flavor, make_image, make_profile

EXAMPLE = textwrap.dedent("""\
    version: 1            # format version
    description: Two-tier web application
    parameters:
      web_count: {type: integer, default: 2, min: 1, max: 10, description: Web servers}
      admin_email: {type: string, default: "ops@example.com"}
    servers:
      web:
        image: Debian 12        # an Image of the organisation by "name" or "name version"
        profile: small          # a HardwareProfile slug or name
        count: "{{ web_count }}"   # integer or a parameter reference
        placement: {spread: accounts}   # accounts | regions | none
        networks: [default]
        ports: [80, 443, {port: 22, cidr: 10.0.0.0/8}]
        user_data: |
          #!/bin/sh
          echo "{{ admin_email }}" > /etc/motd
        depends_on: [db]
      db:
        image: Debian 12
        profile: medium
        count: 1
    """)


@pytest.fixture
def catalog(acme, web):
    return {
        "debian": make_image(web, "Debian", "12"),
        "small": make_profile(acme, "Small", 1, 2048),
        "medium": make_profile(acme, "Medium", 2, 4096),
    }


def issues_of(source: str, org) -> list[BlueprintIssue]:
    spec, issues = validate_blueprint(source, organization=org)
    assert spec is None and issues
    return issues


def one(issues: list[BlueprintIssue], text: str) -> BlueprintIssue:
    found = [i for i in issues if text in i.message]
    assert len(found) == 1, issues
    return found[0]


def with_line(source: str, line: int, new: str) -> str:
    lines = source.splitlines()
    lines[line - 1] = new
    return "\n".join(lines) + "\n"


# --- validation ----------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_documented_example_is_valid(acme, catalog):
    spec, issues = validate_blueprint(EXAMPLE, organization=acme)
    assert issues == []
    web, db = spec["servers"]["web"], spec["servers"]["db"]
    assert web["image_id"] == catalog["debian"].pk and web["profile_id"] == catalog["small"].pk
    assert db["profile_id"] == catalog["medium"].pk
    assert web["count"] == "{{ web_count }}" and db["count"] == 1
    assert web["placement"] == {"spread": "accounts"} and db["placement"] == {"spread": "none"}
    assert web["ports"] == [
        {"port": 80, "cidr": "0.0.0.0/0", "protocol": "tcp"},
        {"port": 443, "cidr": "0.0.0.0/0", "protocol": "tcp"},
        {"port": 22, "cidr": "10.0.0.0/8", "protocol": "tcp"},
    ]
    assert web["depends_on"] == ["db"] and db["networks"] == ["default"]
    assert spec["parameters"]["web_count"]["default"] == 2


@pytest.mark.django_db
def test_a_typo_in_a_key_is_reported_on_its_line_with_a_suggestion(acme, catalog):
    source = with_line(EXAMPLE, 19, "    imgae: Debian 12")
    issues = issues_of(source, acme)
    typo = one(issues, "unknown key 'imgae'")
    assert typo.message == "unknown key 'imgae' (did you mean 'image'?)"
    assert (typo.line, typo.column, typo.path) == (19, 5, "servers.db.imgae")
    missing = one(issues, "needs 'image'")
    assert missing.path == "servers.db" and missing.line == 19


@pytest.mark.django_db
def test_a_wrong_type_is_reported_on_its_line(acme, catalog):
    issues = issues_of(with_line(EXAMPLE, 12, "    networks: default"), acme)
    issue = one(issues, "networks")
    assert (issue.line, issue.path, issue.message) == (12, "servers.web.networks", "networks must be a list")


@pytest.mark.django_db
def test_count_zero_is_reported_on_its_line(acme, catalog):
    issue = one(issues_of(with_line(EXAMPLE, 21, "    count: 0"), acme), "count")
    assert (issue.line, issue.column, issue.path) == (21, 12, "servers.db.count")
    assert issue.message == "count must be at least 1"
    issue = one(issues_of(with_line(EXAMPLE, 21, "    count: lots"), acme), "count")
    assert issue.line == 21 and "parameter reference" in issue.message


@pytest.mark.django_db
def test_unknown_image_and_profile_are_reported_on_their_lines(acme, catalog):
    source = with_line(with_line(EXAMPLE, 19, "    image: Debain 12"), 20, "    profile: huge")
    issues = issues_of(source, acme)
    image = one(issues, "unknown image")
    assert (image.line, image.path) == (19, "servers.db.image")
    assert "did you mean 'Debian 12'" in image.message
    profile = one(issues, "unknown hardware profile")
    assert (profile.line, profile.path) == (20, "servers.db.profile")


@pytest.mark.django_db
def test_images_of_another_organisation_are_unknown(acme, globex, ops, catalog):
    make_image(ops, "Globex OS", "1")
    issue = one(issues_of(with_line(EXAMPLE, 19, "    image: Globex OS 1"), acme), "unknown image")
    assert issue.line == 19


@pytest.mark.django_db
def test_a_dependency_cycle_is_reported(acme, catalog):
    source = EXAMPLE + "    depends_on: [web]\n"
    issue = one(issues_of(source, acme), "dependency cycle")
    assert issue.message in ("dependency cycle: web → db → web", "dependency cycle: db → web → db")
    assert issue.line in (17, 22)
    unknown = one(issues_of(EXAMPLE + "    depends_on: [cache]\n", acme), "unknown server 'cache'")
    assert (unknown.line, unknown.path) == (22, "servers.db.depends_on.0")


@pytest.mark.django_db
def test_a_yaml_syntax_error_gives_its_line(acme, catalog):
    source = with_line(EXAMPLE, 11, "    placement: {spread: accounts")
    issues = issues_of(source, acme)
    assert len(issues) == 1
    assert issues[0].message.startswith("YAML syntax error")
    assert issues[0].line in (11, 12)
    issues = issues_of("version: 1\nservers:\n  web:\n    image: [unclosed\n", acme)
    assert issues[0].line == 5 and "YAML syntax error" in issues[0].message


@pytest.mark.django_db
def test_parameter_references_and_defaults_are_checked(acme, catalog):
    source = EXAMPLE.replace('"{{ web_count }}"', '"{{ web_cnt }}"').replace('"{{ admin_email }}"', "{{ mail }}")
    issues = issues_of(source, acme)
    assert one(issues, "unknown parameter 'web_cnt'").line == 10
    assert one(issues, "unknown parameter 'mail'").line == 16  # the line inside the block
    source = with_line(EXAMPLE, 4, "  web_count: {type: integer, default: 20, min: 1, max: 10}")
    assert one(issues_of(source, acme), "default of parameter 'web_count'").message.endswith("must be at most 10")
    source = with_line(EXAMPLE, 5, "  admin_email: {type: string, default: 3}")
    assert one(issues_of(source, acme), "admin_email").line == 5
    source = EXAMPLE.replace("{{ admin_email }}", "{{ admin_email | upper }}")
    assert one(issues_of(source, acme), "only {{ name }} substitutions").line == 16


@pytest.mark.django_db
def test_ports_out_of_range_and_bad_networks_are_refused(acme, catalog):
    issues = issues_of(with_line(EXAMPLE, 13, "    ports: [80, 70000, {port: 0}, {port: 22, cidr: nowhere}]"), acme)
    assert one(issues, "at most 65535").path == "servers.web.ports.1"
    assert one(issues, "at least 1").path == "servers.web.ports.2.port"
    assert all(i.line == 13 for i in issues)


@pytest.mark.django_db
def test_unsafe_or_oversized_yaml_is_refused(acme, catalog):
    issue = issues_of("version: 1\nservers: !!python/object/apply:os.system ['true']\n", acme)[0]
    assert issue.line == 2
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    assert "more than" in issues_of(bomb, acme)[0].message
    assert "larger than" in issues_of("# " + "x" * 200_001, acme)[0].message
    assert "nests more than 20 levels" in issues_of("version: 1\nservers: " + "[" * 50_000, acme)[0].message
    assert "duplicate key 'count'" in issues_of(EXAMPLE + "    count: 2\n", acme)[0].message


@pytest.mark.django_db
def test_parameter_values_and_user_data_rendering():
    spec = {"parameters": {"n": {"type": "integer", "default": 2, "min": 1, "max": 5},
                           "on": {"type": "boolean", "default": False},
                           "size": {"type": "choice", "choices": ["s", "m"]}}}
    values, problems = parameter_values(spec, {"n": "4", "size": "m"})
    assert values == {"n": 4, "on": False, "size": "m"} and problems == []
    _, problems = parameter_values(spec, {"n": "9", "other": 1})
    assert "parameter 'n' must be at most 5" in problems and "parameter 'size' needs a value" in problems
    assert "unknown parameter 'other'" in problems
    text = render_user_data("a={{ n }} b={{on}} c={{ missing }} d={{ n | x }} {% raw %}", {"n": 4, "on": True})
    assert text == "a=4 b=true c={{ missing }} d={{ n | x }} {% raw %}"


# --- versions and rights -------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_versions_are_immutable(dennis, web, acme, catalog):
    blueprint = blueprint_create(actor=dennis, project=web, name="Two tier", source=EXAMPLE, note="first")
    v1 = BlueprintVersion.objects.all_tenants().get(blueprint=blueprint, number=1)
    v1_before = (v1.source, v1.spec, v1.note, v1.created_at)
    source2 = EXAMPLE.replace("count: 1", "count: 2")
    v2 = blueprint_version_save(actor=dennis, blueprint=blueprint, source=source2, note="two dbs")
    assert v2.number == 2 and v2.pk != v1.pk and v2.spec["servers"]["db"]["count"] == 2
    v1.refresh_from_db()
    assert (v1.source, v1.spec, v1.note, v1.created_at) == v1_before
    assert v1.spec["servers"]["db"]["count"] == 1
    blueprint.refresh_from_db()
    assert blueprint.latest_version == 2
    # the same source again: nothing new
    events = AuditEvent.objects.all_tenants().filter(verb="blueprint.version_save").count()
    again = blueprint_version_save(actor=dennis, blueprint=blueprint, source=source2)
    assert again.pk == v2.pk
    assert BlueprintVersion.objects.all_tenants().filter(blueprint=blueprint).count() == 2
    assert AuditEvent.objects.all_tenants().filter(verb="blueprint.version_save").count() == events == 1


@pytest.mark.django_db
def test_an_invalid_source_saves_nothing(dennis, web, acme, catalog):
    with pytest.raises(ServiceError) as e:
        blueprint_create(actor=dennis, project=web, name="Broken", source=with_line(EXAMPLE, 21, "    count: 0"))
    assert "line 21" in str(e.value) and "count must be at least 1" in str(e.value)
    assert not Blueprint.objects.all_tenants().filter(name="Broken").exists()
    blueprint = blueprint_create(actor=dennis, project=web, name="Fine", source=EXAMPLE)
    with pytest.raises(ServiceError, match="line 19"):
        blueprint_version_save(actor=dennis, blueprint=blueprint, source=with_line(EXAMPLE, 19, "    imgae: x"))
    blueprint.refresh_from_db()
    assert blueprint.latest_version == 1
    assert BlueprintVersion.objects.all_tenants().filter(blueprint=blueprint).count() == 1


@pytest.mark.django_db
def test_consumers_cannot_create_and_names_are_unique(connor, dennis, web, acme, catalog):
    with pytest.raises(PermissionDenied):
        blueprint_create(actor=connor, project=web, name="Mine", source=EXAMPLE)
    blueprint_create(actor=dennis, project=web, name="Mine", source=EXAMPLE)
    with pytest.raises(ServiceError, match="already has a blueprint"):
        blueprint_create(actor=dennis, project=web, name="mine", source=EXAMPLE)
    assert Blueprint.objects.all_tenants().filter(organization=acme).count() == 1


@pytest.mark.django_db
def test_an_object_grant_lets_a_designer_of_another_project_edit(sam, dennis, mallory, acme, web, data, catalog):
    dana = User.objects.create_user(username="dana", password="x-long-password-1")
    Membership.objects.create(user=dana, organization=acme, project=data, role="designer")
    blueprint = blueprint_create(actor=dennis, project=web, name="Shared", source=EXAMPLE)
    source2 = EXAMPLE.replace("count: 1", "count: 3")
    with pytest.raises(PermissionDenied):
        blueprint_version_save(actor=dana, blueprint=blueprint, source=source2)
    with pytest.raises(ServiceError, match="not a member"):
        blueprint_grant_manage(actor=sam, blueprint=blueprint, user=mallory)
    with pytest.raises(PermissionDenied):  # a grant holder cannot pass it on
        blueprint_grant_manage(actor=dana, blueprint=blueprint, user=dana)
    blueprint_grant_manage(actor=sam, blueprint=blueprint, user=dana)
    assert blueprint_version_save(actor=dana, blueprint=blueprint, source=source2).number == 2
    blueprint_update(actor=dana, blueprint=blueprint, description="now with three dbs")
    blueprint_revoke_manage(actor=dennis, blueprint=blueprint, user=dana)
    with pytest.raises(PermissionDenied):
        blueprint_version_save(actor=dana, blueprint=blueprint, source=EXAMPLE)
    verbs = set(AuditEvent.objects.all_tenants().filter(object_type="blueprint").values_list("verb", flat=True))
    assert {"blueprint.create", "blueprint.grant_manage", "blueprint.version_save", "blueprint.update",
            "blueprint.revoke_manage"} <= verbs


# --- preview -------------------------------------------------------------------------------------------------------
@pytest.fixture
def two_clouds(acme, catalog):
    a = make_account(acme, "sim-a")
    b = make_account(acme, "sim-b")
    for account, price in ((a, "0.010"), (b, "0.012")):
        make_flavor(account, "s1", 1, 2048, price=price)
        make_flavor(account, "m2", 2, 4096, price=str(Decimal(price) * 2))
        ImageCopy.objects.create(organization=acme, image=catalog["debian"], account=account, region="region-1",
                                 state=ImageCopy.State.AVAILABLE, provider_image_id=f"img-{account.slug}")
    return a, b


@pytest.mark.django_db
def test_preview_spreads_web_over_two_accounts(acme, catalog, two_clouds):
    a, b = two_clouds
    spec, _ = validate_blueprint(EXAMPLE, organization=acme)
    preview = blueprint_preview(spec, organization=acme)
    assert preview.problems == []
    by_name = {i.name: i for i in preview.instances}
    assert list(by_name) == ["db-1", "web-1", "web-2"]  # dependencies first
    assert {by_name["web-1"].account.pk, by_name["web-2"].account.pk} == {a.pk, b.pk}
    assert by_name["web-1"].account == a  # the cheaper account first
    assert (by_name["db-1"].account, by_name["db-1"].flavor.name) == (a, "m2")  # spread none: the cheapest
    assert by_name["web-1"].user_data == '#!/bin/sh\necho "ops@example.com" > /etc/motd\n'
    assert preview.hourly == Decimal("0.010") + Decimal("0.012") + Decimal("0.020")
    assert preview.monthly == (preview.hourly * 730).quantize(Decimal("0.01"))
    bigger = blueprint_preview(spec, organization=acme, parameters={"web_count": "4"})
    accounts = [i.account.name for i in bigger.instances if i.server == "web"]
    assert accounts == ["sim-a", "sim-b", "sim-a", "sim-b"]


@pytest.mark.django_db
def test_preview_needs_an_image_copy_and_granted_clouds(acme, web, catalog, two_clouds):
    a, b = two_clouds
    ImageCopy.objects.all_tenants().filter(account=b).update(state=ImageCopy.State.FAILED)
    spec, _ = validate_blueprint(EXAMPLE, organization=acme)
    preview = blueprint_preview(spec, organization=acme)
    assert {i.account.name for i in preview.instances} == {"sim-a"}  # only where the image is
    ImageCopy.objects.all_tenants().filter(account=a).delete()
    preview = blueprint_preview(spec, organization=acme)
    assert "image Debian 12 has no copy in sim-a/region-1, sim-b/region-1: push it first" in preview.problems
    assert all(i.account is None for i in preview.instances)
    estimate = blueprint_preview(spec, organization=acme, require_copies=False)
    assert estimate.problems == [] and estimate.hourly > 0
    # a project sees only its grants: web has none
    assert any("no active cloud account granted to Web" in p for p in blueprint_preview(
        spec, organization=acme, project=web, require_copies=False).problems)
    # a parameter without a value
    assert "parameter 'web_count' must be at most 10" in blueprint_preview(
        spec, organization=acme, parameters={"web_count": 11}).problems

"""docs/catalog.md is checked by running what it shows: its reference blueprint validates and previews, and each
error it shows is what the validator answers for the broken example next to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apps.catalog.blueprints import issues_text, validate_blueprint
from apps.catalog.models import HardwareProfile
from tests.catalog.test_profiles import make_image

pytestmark = pytest.mark.django_db

DOC = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC, flags=re.S)


@pytest.fixture
def org_catalog(acme, web):
    make_image(web, "Debian", "12")
    for slug, vcpus, ram in (("small", 1, 2048), ("medium", 2, 4096), ("large", 4, 8192)):
        HardwareProfile.objects.create(organization=acme, name=slug, slug=slug, vcpus=vcpus, ram_mb=ram)
    return acme


def test_reference_blueprint_is_valid(org_catalog):
    reference = _blocks("yaml")[0]
    spec, issues = validate_blueprint(reference, organization=org_catalog)
    assert issues == [] and set(spec["servers"]) == {"web", "db"}
    assert spec["servers"]["web"]["placement"]["spread"] == "accounts"


def test_error_examples_are_what_the_validator_says(org_catalog):
    broken, shown = _blocks("yaml broken"), _blocks("text")
    assert broken and len(broken) == len(shown)
    for source, expected in zip(broken, shown, strict=True):
        _, issues = validate_blueprint(source, organization=org_catalog)
        assert issues_text(issues).strip() == expected.strip()

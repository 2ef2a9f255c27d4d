"""Catalog page routes for the generated isolation walk (keyword arguments of tests.test_route_walk.Route)."""

from __future__ import annotations

from typing import Any

ROUTES: dict[str, dict[str, Any]] = {
    # the consumers' catalog
    "catalog:browse": dict(allowed="connor", shows_marker=True),
    "catalog:item-detail": dict(obj="catalog_item", allowed="connor", shows_marker=True),
    # images
    "catalog:images": dict(allowed="dennis", shows_marker=True),
    "catalog:image-import": dict(methods=("get", "post"), allowed="dennis"),
    "catalog:image-detail": dict(obj="image", allowed="dennis", shows_marker=True),
    "catalog:image-row": dict(obj="image", allowed="dennis", shows_marker=True),
    "catalog:image-edit": dict(obj="image", methods=("get", "post"), allowed="dennis", shows_marker=True),
    "catalog:image-delete": dict(obj="image", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:image-push": dict(obj="image", methods=("post",), allowed="dennis", ok=(302, 400)),
    "catalog:image-approve": dict(obj="image", methods=("post",), allowed="sarah", ok=(302, 400)),
    "catalog:image-revoke": dict(obj="image", methods=("post",), allowed="sarah", ok=(302, 400)),
    "catalog:image-share": dict(obj="image", methods=("post",), allowed="dennis", ok=(302, 400)),
    "catalog:image-editors": dict(obj="image", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:image-editor-remove": dict(obj="image", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:blueprint-editors": dict(obj="blueprint", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:blueprint-editor-remove": dict(obj="blueprint", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:share-remove": dict(obj="image_share", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:copy-row": dict(obj="image_copy", allowed="dennis", shows_marker=True),
    "catalog:copy-retry": dict(obj="image_copy", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:approvals": dict(allowed="sarah", shows_marker=True),
    # hardware profiles
    "catalog:profiles": dict(allowed="dennis", shows_marker=True),
    "catalog:profile-create": dict(methods=("get", "post"), allowed="dennis"),
    "catalog:profile-edit": dict(obj="hardware_profile", methods=("get", "post"), allowed="dennis"),
    "catalog:profile-delete": dict(obj="hardware_profile", methods=("post",), allowed="dennis", ok=(302,)),
    # blueprints
    "catalog:blueprints": dict(allowed="dennis", shows_marker=True),
    "catalog:blueprint-create": dict(methods=("get", "post"), allowed="dennis"),
    "catalog:blueprint-validate": dict(methods=("post",), allowed="dennis"),
    "catalog:blueprint-editor": dict(obj="blueprint", methods=("get", "post"), allowed="dennis", shows_marker=True),
    "catalog:blueprint-rename": dict(obj="blueprint", methods=("post",), allowed="dennis", ok=(302, 400)),
    "catalog:blueprint-version": dict(obj="blueprint_version", allowed="dennis", shows_marker=True),
    # catalog management
    "catalog:items": dict(allowed="dennis", shows_marker=True),
    "catalog:item-create": dict(methods=("get", "post"), allowed="dennis"),
    "catalog:item-edit": dict(obj="catalog_item", methods=("get", "post"), allowed="dennis", shows_marker=True),
    "catalog:item-enable": dict(obj="catalog_item", methods=("post",), allowed="dennis", ok=(302,)),
    "catalog:item-delete": dict(obj="catalog_item", methods=("post",), allowed="dennis", ok=(302,)),
}

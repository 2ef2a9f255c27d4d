"""Catalog API routes for the generated isolation walk (keyword arguments of tests.test_route_walk.Route)."""

from __future__ import annotations

from typing import Any

ROUTES: dict[str, dict[str, Any]] = {
    # images
    "api:image-list": dict(methods=("get", "post"), shows_marker=True),
    "api:image-detail": dict(obj="image", methods=("get", "patch", "delete"), shows_marker=True),
    "api:image-upload": dict(methods=("post",)),
    "api:image-import-provider": dict(methods=("post",)),
    "api:image-push": dict(obj="image", methods=("post",)),
    "api:image-push-targets": dict(obj="image"),
    "api:image-approve": dict(obj="image", methods=("post",), allowed="sarah"),
    "api:image-revoke": dict(obj="image", methods=("post",), allowed="sarah"),
    "api:image-shares": dict(obj="image", methods=("get", "post"), shows_marker=True),
    # copies and shares
    "api:image-copy-list": dict(allowed="dennis", shows_marker=True),
    "api:image-copy-detail": dict(obj="image_copy", allowed="dennis", shows_marker=True),
    "api:image-copy-retry": dict(obj="image_copy", methods=("post",)),
    "api:image-share-list": dict(shows_marker=True),
    "api:image-share-detail": dict(obj="image_share", methods=("get", "delete"), shows_marker=True),
    # hardware profiles
    "api:hardware-profile-list": dict(methods=("get", "post"), allowed="dennis", shows_marker=True),
    "api:hardware-profile-detail": dict(obj="hardware_profile", methods=("get", "patch", "delete"),
                                        shows_marker=True),
    "api:hardware-profile-mapping": dict(obj="hardware_profile", allowed="dennis"),
    # blueprints
    "api:blueprint-list": dict(methods=("get", "post"), allowed="dennis", shows_marker=True),
    "api:blueprint-detail": dict(obj="blueprint", methods=("get", "patch"), shows_marker=True),
    "api:blueprint-versions": dict(obj="blueprint", methods=("get", "post"), shows_marker=True),
    "api:image-editors": dict(obj="image", methods=("get", "post")),
    "api:image-remove-editor": dict(obj="image", methods=("post",), ok=(400,)),
    "api:blueprint-editors": dict(obj="blueprint", methods=("get", "post")),
    "api:blueprint-remove-editor": dict(obj="blueprint", methods=("post",), ok=(400,)),
    "api:blueprint-validate": dict(methods=("post",)),
    "api:blueprint-preview": dict(methods=("post",)),
    "api:blueprint-version-list": dict(allowed="dennis", shows_marker=True),
    "api:blueprint-version-detail": dict(obj="blueprint_version", shows_marker=True),
    # the catalog: consumers see what is published to their project
    "api:catalog-item-list": dict(methods=("get", "post"), allowed="connor", shows_marker=True),
    "api:catalog-item-detail": dict(obj="catalog_item", methods=("get", "patch", "delete"), allowed="connor",
                                    shows_marker=True),
    "api:catalog-item-publish": dict(obj="catalog_item", methods=("post",)),
    "api:catalog-item-unpublish": dict(obj="catalog_item", methods=("post",)),
    "api:catalog-item-enable": dict(obj="catalog_item", methods=("post",)),
    "api:catalog-item-disable": dict(obj="catalog_item", methods=("post",)),
}

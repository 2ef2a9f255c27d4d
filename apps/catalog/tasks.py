"""Thin Celery tasks of the catalog: they receive ids, load fresh rows and call a service."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="apps.catalog.tasks.image_import_url_task", ignore_result=True)
def image_import_url_task(image_id: int) -> None:
    """Download, check and store the file of a URL import."""
    from apps.catalog.images import image_download

    image_download(image_id)


@shared_task(name="apps.catalog.tasks.image_copy_push_task", ignore_result=True)
def image_copy_push_task(copy_id: int) -> None:
    """Convert (when needed) and push one image copy through the Operation protocol."""
    from apps.catalog.images import image_copy_run

    image_copy_run(copy_id)


@shared_task(name="apps.catalog.tasks.catalog_prices_refresh", ignore_result=True)
def catalog_prices_refresh() -> int:
    """Recompute every catalog item's price estimate (flavor prices change with syncs and the sysadmin's prices).
    Returns how many items changed."""
    from apps.catalog.catalog import catalog_item_refresh_price
    from apps.catalog.models import CatalogItem

    changed = 0
    items = CatalogItem.objects.all_tenants().select_related("image", "profile", "blueprint_version").order_by("pk")
    for item in items:
        before = (item.price_hourly_min, item.price_hourly_max)
        catalog_item_refresh_price(item)
        changed += (item.price_hourly_min, item.price_hourly_max) != before
    return changed

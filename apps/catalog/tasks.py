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

"""Thin Celery tasks of the catalog: they receive ids, load fresh rows and call a service."""

"""Celery worker glue: the app, per-process resources and thin tasks over ``app.ingest``."""

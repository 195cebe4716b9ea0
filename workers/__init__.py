"""Celery worker glue: the app, per-process resources and thin tasks over ``app.ingest``."""

from workers.metrics import choose_multiprocess_mode

# Before anything imports prometheus_client (workers.celery_app imports app.metrics): see workers.metrics.
choose_multiprocess_mode()

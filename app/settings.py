"""Process-wide settings, read once from the environment (prefix ``EHRI_``) or a ``.env`` file.

Per-facility configuration does not live here: it lives in Postgres, loaded from YAML with
``ehr-ingest facilities apply``.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EHRI_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/ehr_ingest",
        description="SQLAlchemy URL of the Postgres ledger (psycopg 3 driver).",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (the doorbell).")
    redis_prefix: str = Field(
        default="ehri:", description="Prefix of every Redis key we create (Celery queues included)."
    )
    queue: str = Field(default="ingest", description="Celery queue the drain tasks go to.")
    periodic_queue: str = Field(
        default="periodic",
        description="Celery queue of beat's periodic tasks: a sweep never waits behind queued drains.",
    )
    reconcile_queue: str = Field(
        default="reconcile",
        description="Celery queue of reconcile runs and backfills: a long run never holds a drain's worker.",
    )
    alerts_queue: str = Field(
        default="alerts",
        description="Celery queue of the feed-health and alert pass: a sink that is slow or down never "
        "holds a worker that drains notifications.",
    )

    log_format: Literal["json", "console"] = "console"
    log_level: str = "INFO"

    # Receiver
    max_body_bytes: int = 1_048_576
    # The MLLP listener (``ehr-ingest mllp serve``): largest HL7 v2 message (AR above), how long a
    # connection may stay silent before it is closed, and optional TLS (both files, PEM).
    mllp_max_message_bytes: int = Field(default=1_048_576, ge=1024)
    mllp_idle_timeout: timedelta = Field(default=timedelta(minutes=10))
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None
    commit_batch_max: int = Field(default=256, description="Most notifications committed in one transaction.")

    # Workers
    drain_batch: int = Field(default=100, description="Inbox rows one drain task claims at a time.")
    drain_time_budget: timedelta = Field(
        default=timedelta(seconds=60),
        description="After this a drain task hands the rest of the facility's work to a fresh task.",
    )
    fetch_concurrency: int = Field(default=8, description="Concurrent fetches per worker process.")
    lease: timedelta = Field(
        default=timedelta(seconds=15),
        description="How long a claimed inbox row is hidden from others without a renewal; renewed every"
        " third of it while its batch is in flight, so a dead worker's rows are due again within it.",
    )
    lease_max_hold: timedelta = Field(
        default=timedelta(minutes=10),
        description="Longest a batch in flight keeps renewing its lease (a wedged worker cannot hide rows).",
    )
    max_attempts: int = Field(default=8, description="Attempts before an inbox row goes to dead letters.")
    retry_base: timedelta = timedelta(seconds=5)
    retry_cap: timedelta = timedelta(minutes=30)
    http_timeout: timedelta = timedelta(seconds=30)
    worker_metrics_port: int | None = Field(
        default=None,
        description="Port on which a celery worker node serves its processes' metrics; unset: not served.",
    )
    worker_metrics_host: str = Field(default="127.0.0.1", description="Address the worker metrics bind to.")

    # Bulk Data ($export)
    bulk_retry_after_cap: timedelta = Field(
        default=timedelta(minutes=5),
        description="Longest Retry-After honoured between $export status polls (Oracle asks 600 s, hours"
        " seen): we poll again after at most this long.",
    )
    bulk_poll_interval: timedelta = Field(
        default=timedelta(seconds=10), description="Wait between status polls when the server names none."
    )
    bulk_timeout: timedelta = Field(
        default=timedelta(hours=2),
        description="A $export not complete this long after its kick-off is cancelled (DELETE) and fails"
        " as bulk_export_timeout.",
    )
    bulk_kickoff_wait: timedelta = Field(
        default=timedelta(minutes=15),
        description="How long a kick-off the server refuses as busy (429: a job already runs) is retried.",
    )
    bulk_max_line_bytes: int = Field(
        default=16 * 1024 * 1024,
        description="Longest ndjson line read; a longer one is quarantined (memory stays bounded).",
    )
    bulk_lock_ttl: timedelta = Field(
        default=timedelta(seconds=60),
        description="Lease of the one-export-per-facility lock in Redis, renewed while the export runs.",
    )

    # Reconciler
    sweep_interval: timedelta = Field(
        default=timedelta(seconds=15), description="How often beat re-rings the doorbell from Postgres."
    )
    subscription_check_interval: timedelta = Field(
        default=timedelta(minutes=5),
        description="How often each facility's subscription is checked ($status or a read), re-activated "
        "when in error or off, and renewed before its end.",
    )
    reconcile_tick: timedelta = Field(
        default=timedelta(seconds=30),
        description="How often beat asks which facilities are due a reconcile (each has its own interval).",
    )
    event_gap_grace: timedelta = Field(
        default=timedelta(minutes=2),
        description="How long a gap in a subscription's event numbers may stay open (a late, reordered "
        "event fills it) before it counts as missed and is fetched with $events or reconciled.",
    )
    reconcile_time_budget: timedelta = Field(
        default=timedelta(minutes=4),
        description="A reconcile run past this commits what it has, stops and continues on the next tick.",
    )

    # Alerts (app.alerts)
    alert_evaluate_interval: timedelta = Field(
        default=timedelta(seconds=30),
        description="How often beat runs the feed-health evaluation, the alert pass and the due sink sends.",
    )
    alert_sinks_file: str | None = Field(
        default=None,
        description="YAML file of the global alert sinks (`sinks:`, app.facilities.schemas.AlertSinksFile);"
        " unset: only the facilities' own sinks.",
    )
    alert_status_page_url: str | None = Field(
        default=None, description="Where Slack messages link to (the on-call's status page or dashboard)."
    )
    alert_resolve_delay: timedelta = Field(
        default=timedelta(minutes=5),
        description="An open alert resolves once its key was evaluated healthy continuously this long.",
    )
    alert_cooldown: timedelta = Field(
        default=timedelta(minutes=30),
        description="A recurrence this soon after a resolve reopens the same alert (same dedup key).",
    )
    alert_delivery_max_attempts: int = Field(
        default=10, ge=1, description="Sends of one delivery before it is failed and its sink reported."
    )
    alert_retry_base: timedelta = Field(default=timedelta(seconds=30))
    alert_retry_cap: timedelta = Field(default=timedelta(minutes=15))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

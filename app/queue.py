"""The doorbell: Celery on Redis, configured so that no work is lost (DESIGN.md rule 1).

Messages carry a facility id, never a payload; Postgres holds the work. Both the receiver (which only
sends) and the workers (which also consume) build their Celery app here, so the receiver never imports
the workers package.

Three queues: drains go to ``settings.queue``, beat's periodic tasks to ``settings.periodic_queue``, so a
sweep is never queued behind a backlog of drains, and reconcile runs (minutes long, a backfill longer)
to ``settings.reconcile_queue``, so a backfill never occupies the worker a drain needs. A worker started
without ``-Q`` consumes all three; a deployment runs the live workers with ``-Q ingest,periodic`` and a
worker of its own with ``-Q reconcile`` (docker-compose.yml, ``make up``).
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery
from kombu.entity import Exchange, Queue

from app.settings import Settings

log = structlog.get_logger("queue")

DRAIN_TASK = "ingest.drain_facility"
SWEEP_TASK = "reconcile.sweep_inbox"
CHECK_SUBSCRIPTIONS_TASK = "reconcile.check_subscriptions"  # beat: fans out one check per facility
CHECK_SUBSCRIPTION_TASK = "reconcile.check_subscription"
ADT_TASK = "hl7v2.process_facility"
RECONCILE_FAN_OUT_TASK = "reconcile.fan_out"
RECONCILE_TASK = "reconcile.poll_facility"
GAPS_FAN_OUT_TASK = "reconcile.gaps_fan_out"  # beat: one gap pass per facility with numbered events
GAPS_TASK = "reconcile.check_gaps"
ALERTS_TASK = "alerts.evaluate"  # beat: feed health → alerts → sink deliveries


def make_celery(settings: Settings, *, beat_schedule: dict[str, dict[str, Any]] | None = None) -> Celery:
    """The Celery app; ``beat_schedule`` is the periodic work (``reconciler.schedule``), applied here as
    configuration rather than as a side effect of importing a tasks module."""
    app = Celery("ehr_ingest", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        beat_schedule=beat_schedule or {},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,  # a message is acknowledged after the task ran...
        task_reject_on_worker_lost=True,  # ...and redelivered if the worker process died under it
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_queues=[
            _queue(settings.queue),
            _queue(settings.periodic_queue),
            _queue(settings.reconcile_queue),
        ],
        task_routes={
            DRAIN_TASK: {"queue": settings.queue},
            ADT_TASK: {"queue": settings.queue},
            SWEEP_TASK: {"queue": settings.periodic_queue},
            CHECK_SUBSCRIPTIONS_TASK: {"queue": settings.periodic_queue},
            CHECK_SUBSCRIPTION_TASK: {"queue": settings.periodic_queue},
            RECONCILE_FAN_OUT_TASK: {"queue": settings.periodic_queue},
            RECONCILE_TASK: {"queue": settings.reconcile_queue},
            GAPS_FAN_OUT_TASK: {"queue": settings.periodic_queue},
            GAPS_TASK: {"queue": settings.reconcile_queue},
            ALERTS_TASK: {"queue": settings.alerts_queue},
        },
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Longer than any task (the drain budget, then one last batch renewing its lease for at most
            # lease_max_hold), so Redis does not redeliver a running task.
            "visibility_timeout": int(
                settings.drain_time_budget.total_seconds() + settings.lease_max_hold.total_seconds() + 300
            ),
            "global_keyprefix": settings.redis_prefix,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # stdout is not a logger: lines keep their level (app.logging)
        timezone="UTC",
        enable_utc=True,
    )
    return app


def _queue(name: str) -> Queue:
    """A queue bound to an exchange of its own by its own name: nothing published for one queue can be
    routed to the other (with a shared default exchange both were bound by the key ``ingest``)."""
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]  # kombu ships no annotations
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]


def enqueue_drain(celery: Celery, queue: str, facility_id: str, *, retry: bool = True) -> None:
    """The one way a drain is asked for: by the receiver's doorbell, a drain handing on the rest of its
    work, and the sweeper. Raises the broker's error; callers decide whether that matters."""
    celery.send_task(DRAIN_TASK, args=[facility_id], queue=queue, retry=retry)


def enqueue_adt(celery: Celery, queue: str, facility_id: str, *, retry: bool = True) -> None:
    """Ask for the facility's due ADT rows to be processed (the MLLP listener and the sweeper)."""
    celery.send_task(ADT_TASK, args=[facility_id], queue=queue, retry=retry)


def ring_adt(celery: Celery, queue: str, facility_id: str) -> bool:
    """The MLLP listener's doorbell: a failure is logged, not raised (the sweeper rings again)."""
    try:
        enqueue_adt(celery, queue, facility_id, retry=False)
    except Exception as exc:  # noqa: BLE001 - any broker failure means "the sweeper will do it"
        log.warning("queue.doorbell_failed", facility_id=facility_id, error=type(exc).__name__)
        return False
    return True


def enqueue_reconcile(celery: Celery, queue: str, facility_id: str, *, trigger: str = "schedule") -> None:
    """Ask for a reconcile of one facility (on the reconcile queue: never in a drain's way, nor a drain in
    its)."""
    celery.send_task(RECONCILE_TASK, args=[facility_id, trigger], queue=queue)


class Doorbell:
    """Tells workers that a facility has work. Failure to ring is logged, not raised: the sweeper rings
    again from Postgres."""

    def __init__(self, celery: Celery, queue: str) -> None:
        self._celery = celery
        self._queue = queue

    def ring(self, facility_id: str) -> bool:
        try:
            enqueue_drain(self._celery, self._queue, facility_id, retry=False)
        except Exception as exc:  # noqa: BLE001 - any broker failure means "the sweeper will do it"
            log.warning("queue.doorbell_failed", facility_id=facility_id, error=type(exc).__name__)
            return False
        return True

    def close(self) -> None:
        pool: Any = self._celery.pool
        pool.force_close_all()

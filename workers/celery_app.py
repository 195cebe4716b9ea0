"""The Celery application used by ``celery -A workers.celery_app worker|beat``.

Per-process resources (database engine, EHR clients, the reference cache) are created after the prefork
fork, in ``worker_process_init``, or lazily on first use in a process that never forked (solo pool, tests).

Logging is ours (``app.logging``), not Celery's: ``setup_logging`` is connected, so Celery neither
configures the root logger nor redirects stdout/stderr into a logger (which labelled every line of a pool
child ``WARNING/ForkPoolWorker-n``). With JSON logs, the free-text banners and shutdown notices Celery
prints are turned off or logged instead.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import celery.apps.worker
from celery.signals import celeryd_init, setup_logging, worker_process_init, worker_process_shutdown
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine, make_sessionmaker
from app.ehr.pool import EHRClientPool
from app.ingest.pipeline.references import ReferenceCache
from app.logging import configure_logging
from app.queue import make_celery
from app.settings import Settings, get_settings
from reconciler.schedule import beat_schedule

celery_app = make_celery(get_settings(), beat_schedule=beat_schedule(get_settings()))
celery_app.conf.include = ["workers.tasks", "reconciler.tasks"]


@setup_logging.connect  # type: ignore[untyped-decorator]
def _setup_logging(**_: Any) -> None:
    configure_logging(get_settings())


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _setup_logging_early(**_: Any) -> None:
    # Sent before the worker checks its privileges, whose warning would otherwise be free text.
    configure_logging(get_settings())


def _quiet(factory: Any) -> Any:
    """Celery's ``app.Worker`` or ``app.Beat`` with ``quiet=True`` whatever the command line said: the
    start-up banner is free text on stdout."""

    def build(*args: Any, **kwargs: Any) -> Any:
        return factory(*args, **{**kwargs, "quiet": True})

    return build


def _say(message: str, *_: Any) -> None:
    """Replaces Celery's ``safe_say`` (a raw write to stdout for "worker: Warm shutdown (MainProcess)" and
    the like) with a log line."""
    logging.getLogger("celery.apps.worker").info(message.strip())


if get_settings().log_format == "json":
    celery_app.Worker = _quiet(celery_app.Worker)
    celery_app.Beat = _quiet(celery_app.Beat)
    celery.apps.worker.safe_say = _say


@dataclass
class Runtime:
    """What one worker process owns: nothing here is shared across processes except through Redis."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clients: EHRClientPool
    references: ReferenceCache


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime  # noqa: PLW0603 - one runtime per process, by design
    with _lock:
        if _runtime is None:
            settings = get_settings()
            configure_logging(settings)
            engine = make_engine(settings.database_url, pool_size=2)
            _runtime = Runtime(
                settings=settings,
                engine=engine,
                sessions=make_sessionmaker(engine),
                clients=EHRClientPool(
                    timeout_s=settings.http_timeout.total_seconds(),
                    max_connections=settings.fetch_concurrency,
                ),
                references=ReferenceCache(),
            )
        return _runtime


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _init_process(**_: Any) -> None:
    runtime()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown_process(**_: Any) -> None:
    global _runtime  # noqa: PLW0603
    with _lock:
        if _runtime is not None:
            _runtime.clients.close()
            _runtime.engine.dispose()
            _runtime = None

"""The Celery application used by ``celery -A workers.celery_app worker|beat``.

Per-process resources (database engine, EHR clients, the reference cache) are created after the prefork
fork, in ``worker_process_init``, or lazily on first use in a process that never forked (solo pool, tests).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown
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

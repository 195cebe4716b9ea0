"""The Celery application used by ``celery -A workers.celery_app worker|beat``.

Per-process resources (database engine, Redis, EHR clients, the reference cache) are created after the
prefork fork, in ``worker_process_init``, or lazily on first use in a process that never forked (solo
pool, tests). The parent process serves every pool process's metrics (``workers.metrics``).

Logging is ours (``app.logging``), not Celery's: ``setup_logging`` is connected, so Celery neither
configures the root logger nor redirects stdout/stderr into a logger (which labelled every line of a pool
child ``WARNING/ForkPoolWorker-n``). With JSON logs, the free-text banners and shutdown notices Celery
prints are turned off or logged instead.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import celery.apps.worker
import httpx
import redis
from celery.signals import (
    celeryd_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine, make_sessionmaker
from app.ehr import token_events
from app.ehr.pool import EHRClientPool
from app.ingest.pipeline.references import ReferenceCache
from app.logging import configure_logging
from app.queue import make_celery
from app.settings import Settings, get_settings
from reconciler.schedule import beat_schedule
from workers import metrics

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
    redis: redis.Redis
    clients: EHRClientPool
    references: ReferenceCache
    alert_http: httpx.Client  # alert sinks' sends (each sink bounds its own timeout)

    def close(self) -> None:
        self.alert_http.close()
        self.clients.close()
        self.redis.close()
        self.engine.dispose()


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime  # noqa: PLW0603 - one runtime per process, by design
    with _lock:
        if _runtime is None:
            settings = get_settings()
            configure_logging(settings)
            _runtime = _build_runtime(settings)
        return _runtime


def _build_runtime(settings: Settings) -> Runtime:
    """The composition root of a worker process. Redis carries what the processes of a facility share
    (the politeness limits and pauses, the access token); the database sink records the token lifecycle
    in ``token_events``. tests/e2e/test_worker_wiring.py measures both through real worker processes."""
    engine = make_engine(settings.database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    # One quick retry: the limiter and the token cache fail open, a Redis outage must not stall each fetch.
    shared = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 1)
    )
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        redis=shared,
        clients=EHRClientPool(
            timeout_s=settings.http_timeout.total_seconds(),
            max_connections=settings.fetch_concurrency,
            redis_client=shared,
            redis_prefix=settings.redis_prefix,
            token_sink=token_events.database_sink(sessions),
        ),
        references=ReferenceCache(),
        alert_http=httpx.Client(follow_redirects=False),
    )


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _init_process(**_: Any) -> None:
    runtime()


@worker_init.connect  # type: ignore[untyped-decorator]
def _init_worker(**_: Any) -> None:
    """The parent, before the pool forks: totals left by an earlier run of this node are forgotten."""
    directory = metrics.multiprocess_dir()
    if get_settings().worker_metrics_port is not None and directory is not None:
        metrics.clear_stale_files(directory)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _serve_metrics(**_: Any) -> None:
    settings = get_settings()
    if settings.worker_metrics_port is not None:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown_process(pid: int | None = None, **_: Any) -> None:
    global _runtime  # noqa: PLW0603
    metrics.process_exited(pid or os.getpid())
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None

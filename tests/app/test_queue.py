"""The queues are really apart: a message routed to one is delivered by that one only (real Redis)."""

from __future__ import annotations

import redis

from app.queue import DRAIN_TASK, RECONCILE_TASK, SWEEP_TASK, enqueue_reconcile, make_celery
from app.settings import Settings
from tests.conftest import REDIS_URL


def _lengths(prefix: str, *queues: str) -> dict[str, int]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return {queue: int(client.llen(f"{prefix}{queue}")) for queue in queues}
    finally:
        client.close()


def test_a_sweep_lands_on_the_periodic_queue_only_and_a_drain_on_the_ingest_queue_only(
    redis_prefix: str,
) -> None:
    settings = Settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    app = make_celery(settings)
    try:
        with app.connection_for_write() as connection:  # what a worker consuming both queues declares
            for queue in app.amqp.queues.values():
                queue(connection.default_channel).declare()
        app.send_task(SWEEP_TASK)
        assert _lengths(redis_prefix, settings.queue, settings.periodic_queue) == {
            settings.queue: 0,
            settings.periodic_queue: 1,
        }
        app.send_task(DRAIN_TASK, args=["fac-1"])
        assert _lengths(redis_prefix, settings.queue, settings.periodic_queue) == {
            settings.queue: 1,
            settings.periodic_queue: 1,
        }
    finally:
        app.pool.force_close_all()


def test_a_reconcile_lands_on_the_reconcile_queue_only_whoever_asks_for_it(redis_prefix: str) -> None:
    settings = Settings(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    app = make_celery(settings)
    queues = (settings.queue, settings.periodic_queue, settings.reconcile_queue)
    try:
        with app.connection_for_write() as connection:
            for queue in app.amqp.queues.values():
                queue(connection.default_channel).declare()
        app.send_task(RECONCILE_TASK, args=["fac-1"])  # routed by name (beat's fan-out, the CLI)
        enqueue_reconcile(app, settings.reconcile_queue, "fac-1", trigger="no-focus")  # a drain's request
        assert _lengths(redis_prefix, *queues) == {
            settings.queue: 0,
            settings.periodic_queue: 0,
            settings.reconcile_queue: 2,
        }
    finally:
        app.pool.force_close_all()

"""The two queues are really two: a message routed to one is delivered by that one only (real Redis)."""

from __future__ import annotations

import redis

from app.queue import DRAIN_TASK, SWEEP_TASK, make_celery
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

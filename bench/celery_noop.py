"""Baseline for the pipeline benchmark: a bare Celery worker running no-op tasks, same broker settings."""

from __future__ import annotations

import redis

from app.queue import make_celery
from app.settings import get_settings

settings = get_settings()
celery_app = make_celery(settings)
_redis = redis.Redis.from_url(settings.redis_url)


@celery_app.task(name="bench.noop")  # type: ignore[untyped-decorator]  # Celery ships no type hints
def noop() -> None:
    _redis.incr(f"{settings.redis_prefix}noop_done")

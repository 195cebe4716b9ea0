"""Creating and dropping throwaway databases and Redis key spaces for tests, demo and benchmarks."""

from __future__ import annotations

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

from app.db.migrate import upgrade


def _admin_conninfo(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


def create_database(database_url: str) -> None:
    """(Re)create the database named in ``database_url`` and migrate it to head."""
    name = make_url(database_url).database
    assert name
    with psycopg.connect(_admin_conninfo(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    upgrade(database_url)


def drop_database(database_url: str) -> None:
    name = make_url(database_url).database
    assert name
    with psycopg.connect(_admin_conninfo(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def clear_redis_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (our Celery queues and bookkeeping); returns how many."""
    assert prefix, "refusing to clear an empty prefix"
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()

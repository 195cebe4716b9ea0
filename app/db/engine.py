"""Engines are made per process (FastAPI lifespan, Celery ``worker_process_init``), never at import."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from app.fhir import jsonwire

# hide_parameters: a database error's message would otherwise carry the statement's parameters, which
# include resource bodies, into exceptions and logs (DESIGN.md rule 6). The JSON (de)serializer is the
# wire's (app.fhir.jsonwire): jsonb read back keeps its decimals exact, as psycopg's default would not.
_JSON = {"json_serializer": jsonwire.dumps, "json_deserializer": jsonwire.loads}


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    return create_engine(
        url, pool_size=pool_size, max_overflow=5, pool_pre_ping=True, hide_parameters=True, **_JSON
    )


def make_async_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=5, pool_pre_ping=True, hide_parameters=True, **_JSON
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)

"""Shared fixtures: a real Postgres database migrated once per session (dropped at the end), a session
per test inside a transaction that is rolled back, and a private Redis key space.

The servers are the ones at EHRI_TEST_DATABASE_URL / EHRI_TEST_REDIS_URL when they answer, else embedded
ones started for this run in a temporary directory and stopped at its end (``devstack.servers``;
EHRI_EMBEDDED=never|auto|always), chosen when this module is imported.
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.db.engine import make_engine
from app.db.models import Facility
from devstack.database import clear_redis_prefix, create_database, drop_database
from devstack.servers import ServerError, Servers, dev_servers

CONFIGURED_DATABASE_URL = os.environ.get(
    "EHRI_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
CONFIGURED_REDIS_URL = os.environ.get("EHRI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _choose_servers() -> tuple[Servers | None, ServerError | None]:
    """Chosen (and started) on import: test modules and conftests below import the URLs by name, some
    before pytest_configure (``pytest tests/e2e`` loads that conftest first). Stopped at unconfigure."""
    try:
        servers = _STACK.enter_context(
            dev_servers(
                CONFIGURED_DATABASE_URL,
                CONFIGURED_REDIS_URL,
                database_setting="EHRI_TEST_DATABASE_URL",
                redis_setting="EHRI_TEST_REDIS_URL",
            )
        )
    except ServerError as exc:
        return None, exc
    return servers, None


_STACK = ExitStack()
atexit.register(_STACK.close)  # should pytest end without unconfigure
_SERVERS, _SERVER_ERROR = _choose_servers()
BASE_DATABASE_URL = _SERVERS.database_url if _SERVERS else CONFIGURED_DATABASE_URL
REDIS_URL = _SERVERS.redis_url if _SERVERS else CONFIGURED_REDIS_URL


def pytest_configure(config: pytest.Config) -> None:
    if _SERVER_ERROR is not None:
        raise pytest.UsageError(str(_SERVER_ERROR))


def pytest_unconfigure(config: pytest.Config) -> None:
    _STACK.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Which servers this run uses, first thing, at any verbosity (``-q`` hides report headers)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and _SERVERS is not None:
        for line in _SERVERS.lines:
            reporter.write_line(line)


@pytest.fixture(scope="session")
def run_id() -> str:
    return f"ehri_test_{uuid.uuid4().hex[:8]}"


@contextmanager
def migrated_database(name: str) -> Iterator[str]:
    """A fresh database migrated to head, dropped afterwards; yields its URL."""
    url = make_url(BASE_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    create_database(url)
    try:
        yield url
    finally:
        drop_database(url)


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    """The product's engine (``make_engine``): jsonb reads back as the product reads it (exact decimals),
    statements' parameters hidden from errors."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def database_url(run_id: str) -> Iterator[str]:
    with migrated_database(run_id) as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    with engine_for(database_url) as engine:
        yield engine


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session rolled back after the test; services' flush() and nested commits stay inside it."""
    with engine.connect() as connection:
        transaction = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()


@pytest.fixture
def redis_prefix(run_id: str) -> Iterator[str]:
    prefix = f"{run_id}:{uuid.uuid4().hex[:6]}:"
    yield prefix
    clear_redis_prefix(REDIS_URL, prefix)


def make_facility(
    session: Session,
    facility_id: str = "fac-1",
    base_url: str = "https://ehr.test/fhir",
    key_file: Path | None = None,
) -> Facility:
    facility = Facility(
        id=facility_id,
        vendor="generic",
        base_url=base_url,
        auth={
            "method": "private_key_jwt",
            "client_id": "client-1",
            "private_key": {"file": str(key_file or "/nonexistent")},
            "algorithm": "RS384",
            "key_id": None,
            "scopes": ["system/*.read"],
            "token_url": None,
        },
        webhook={
            "header": "Authorization",
            "scheme": "Bearer",
            "secret": {"env": "EHRI_TEST_WEBHOOK_SECRET"},
        },
    )
    session.add(facility)
    session.flush()
    return facility

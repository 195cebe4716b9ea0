"""Running ``ehr-ingest`` in-process with typer's CliRunner against a database of its own.

The CLI commits (that is its job), so it cannot share the session database whose tests roll back: it
gets its own migrated database, emptied after every test. Settings are read through an lru_cache, so
the cache is cleared around every invocation to make the CLI see the env given to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from app.cli.main import cli
from app.settings import get_settings
from tests.conftest import BASE_DATABASE_URL, REDIS_URL, engine_for, make_facility, migrated_database

# A port nothing listens on: connecting is refused at once.
UNREACHABLE_URL = "postgresql+psycopg://postgres:s3cret-password@127.0.0.1:1/ehr_ingest"
UNMIGRATED_URL = BASE_DATABASE_URL  # the maintenance database: reachable, no ehr-ingest tables

Invoke = Callable[..., Result]


@pytest.fixture(scope="package")
def cli_database_url(run_id: str) -> Iterator[str]:
    with migrated_database(f"{run_id}_cli") as url:
        yield url


@pytest.fixture(scope="package")
def cli_engine(cli_database_url: str) -> Iterator[Engine]:
    with engine_for(cli_database_url) as engine:
        yield engine


@pytest.fixture(autouse=True)
def _empty_ledger(cli_engine: Engine) -> Iterator[None]:
    yield
    with cli_engine.begin() as conn:
        conn.execute(text("TRUNCATE facilities CASCADE"))


@pytest.fixture
def invoke(cli_database_url: str, redis_prefix: str) -> Invoke:
    """``invoke(*args, database_url=..., redis_url=...)`` runs one command and returns its result."""
    runner = CliRunner()

    def run(*args: str | Path, database_url: str | None = None, redis_url: str = REDIS_URL) -> Result:
        env = {
            "EHRI_DATABASE_URL": database_url or cli_database_url,
            "EHRI_REDIS_URL": redis_url,
            "EHRI_REDIS_PREFIX": redis_prefix,
            "EHRI_QUEUE": f"{redis_prefix}ingest",
            "COLUMNS": "200",  # one table row per line, whatever the terminal running the tests
        }
        get_settings.cache_clear()
        try:
            return runner.invoke(cli, [str(a) for a in args], env=env)
        finally:
            get_settings.cache_clear()

    return run


def assert_one_line_error(result: Result, code: int, *fragments: str) -> None:
    """The user-error contract: ``code``, one line on stderr starting with ``error``, no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def registered_facility(engine: Engine, facility_id: str) -> str:
    """Register ``facility_id`` (committed) for a command to act on, and return it."""
    with Session(engine) as session:
        make_facility(session, facility_id)
        session.commit()
    return facility_id

"""How a command reaches the Postgres ledger: one engine and session per command, and the user errors
that come from the database turned into one-line messages and exit codes (``app.cli`` lists them).

Only failures that are the user's to fix are translated: no connection to Postgres (exit 3: down,
refusing, or no such database), a database that has not been migrated (exit 2), a ``--facility`` that
names no facility (exit 2). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.cli import render
from app.settings import get_settings

_UNDEFINED_TABLE = "42P01"


def describe(database_url: str) -> str:
    """The database URL as it may be printed: never the password."""
    return make_url(database_url).render_as_string(hide_password=True)


def unreachable(database_url: str, exc: BaseException) -> str:
    """The one-line message for a failed connection: where (never the password) and libpq's first line."""
    orig = getattr(exc, "orig", None) or exc
    first = next((part.strip() for part in str(orig).splitlines() if part.strip()), type(orig).__name__)
    return f"cannot connect to Postgres at {describe(database_url)}: {first}"


@contextmanager
def session(*, write: bool = False) -> Iterator[Session]:
    """A session on EHRI_DATABASE_URL; with ``write`` it commits when the block ends without error.

    Connects before the block runs, so "unreachable" is known to have changed nothing."""
    from app.db.engine import make_engine, make_sessionmaker

    database_url = get_settings().database_url
    engine = make_engine(database_url, pool_size=1)
    try:
        try:
            engine.connect().close()
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            render.fail(unreachable(database_url, exc), render.EXIT_UNAVAILABLE)
        sessions = make_sessionmaker(engine)
        try:
            if write:
                with sessions.begin() as s:
                    yield s
            else:
                with sessions() as s:
                    yield s
        except sa_exc.ProgrammingError as exc:
            if getattr(exc.orig, "sqlstate", None) != _UNDEFINED_TABLE:
                raise
            render.fail(
                f"the database at {describe(database_url)} has no ehr-ingest schema: "
                "run `ehr-ingest db upgrade` first"
            )
    finally:
        engine.dispose()


def require_facility(s: Session, facility_id: str | None) -> None:
    """Exit 2 when ``facility_id`` is given and names no facility, rather than print an empty list."""
    from app.facilities.service import get_facility, list_facilities

    if facility_id is None or get_facility(s, facility_id) is not None:
        return
    known = ", ".join(f.id for f in list_facilities(s)) or "none"
    render.fail(f"unknown facility {facility_id!r} (known: {known})")

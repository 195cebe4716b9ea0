"""``ehr-ingest db``: the Postgres ledger's schema."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import exc as sa_exc

from app.cli import render
from app.cli.ledger import unreachable
from app.settings import get_settings

cli = typer.Typer(help="The Postgres ledger.", no_args_is_help=True)


@cli.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Option(help="Alembic revision to reach")] = "head",
) -> None:
    """Apply the Alembic migrations to EHRI_DATABASE_URL (idempotent: at head, nothing happens)."""
    from alembic.util import CommandError

    from app.db.migrate import upgrade as migrate

    database_url = get_settings().database_url
    try:
        migrate(database_url, revision)
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        render.fail(unreachable(database_url, exc), render.EXIT_UNAVAILABLE)
    except CommandError as exc:  # an unknown revision, most often
        render.fail(f"cannot upgrade to {revision!r}: {exc}")
    render.line(f"database at revision {revision}")

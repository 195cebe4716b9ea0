"""``ehr-ingest``: the operator CLI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ConfigurationError
from app.settings import get_settings

cli = typer.Typer(help="FHIR subscription ingestion: operator commands.", no_args_is_help=True)
facilities_cli = typer.Typer(help="Facilities: the EHRs we ingest from.", no_args_is_help=True)
db_cli = typer.Typer(help="The Postgres ledger.", no_args_is_help=True)
cli.add_typer(facilities_cli, name="facilities")
cli.add_typer(db_cli, name="db")
console = Console()
err = Console(stderr=True)


def _sessions() -> sessionmaker[Session]:
    from app.db.engine import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(get_settings().database_url, pool_size=1))


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the Alembic migrations to EHRI_DATABASE_URL."""
    from app.db.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    console.print(f"database at revision {revision}")


@facilities_cli.command("apply")
def facilities_apply(
    file: Annotated[Path, typer.Argument(help="YAML file with a `facilities:` list")],
) -> None:
    """Create or update the facilities declared in FILE (idempotent)."""
    from app.facilities.service import apply_facilities, load_facilities_file

    try:
        parsed = load_facilities_file(file)
    except ConfigurationError as exc:
        err.print(f"[red]error[/red] {exc.detail}")
        raise typer.Exit(2) from exc
    with _sessions().begin() as session:
        result = apply_facilities(session, parsed)
    console.print(
        f"created {len(result.created)}, updated {len(result.updated)}, unchanged {len(result.unchanged)}"
    )
    for fid in result.created:
        console.print(f"  + {fid}")
    for fid in result.updated:
        console.print(f"  ~ {fid}")


@facilities_cli.command("list")
def facilities_list() -> None:
    """List facilities with their vendor, base URL and secret references (never the secrets)."""
    from app.facilities.service import list_facilities

    with _sessions()() as session:
        rows = list_facilities(session)
    table = Table("id", "vendor", "base url", "client", "enabled")
    for f in rows:
        table.add_row(
            f.id, f.vendor, f.base_url, str(f.auth.get("client_id", "")), "yes" if f.enabled else "no"
        )
    console.print(table)


@cli.command("serve")
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the webhook receiver (uvicorn)."""
    import uvicorn

    uvicorn.run(
        "app.api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level="warning",
    )


@cli.command("sim")
def sim(
    config: Annotated[Path, typer.Option(help="ehrsim YAML config")],
    host: str = "127.0.0.1",
    port: int = 8090,
) -> None:
    """Run the simulated EHR (ehrsim)."""
    from ehrsim import cli_main

    cli_main(str(config), host, port)


@cli.command("demo")
def demo(changes: int = 200) -> None:
    """Run the end-to-end demo on this machine and print what reached Postgres."""
    from app.devstack.demo import run_demo

    sys.exit(run_demo(changes=changes))


def main() -> None:
    cli()

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
dead_cli = typer.Typer(
    help="Dead letters: inbox rows that need a human, and their replay.", no_args_is_help=True
)
cli.add_typer(dead_cli, name="dead-letters")
quarantine_cli = typer.Typer(
    help="Quarantine: authenticated bodies that were no recognizable notification.", no_args_is_help=True
)
cli.add_typer(quarantine_cli, name="quarantine")
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


@dead_cli.command("list")
def dead_letters_list(
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    reason: Annotated[str | None, typer.Option(help="only this reason slug")] = None,
    limit: int = 100,
) -> None:
    """Dead rows, newest first, with their reason (ids and reasons only, never resource content)."""
    from app.ingest.dead_letters import dead_letter_counts, list_dead_letters

    with _sessions()() as session:
        rows = list_dead_letters(session, facility=facility, reason=reason, limit=limit)
        counts = dead_letter_counts(session)
    table = Table("id", "facility", "focus", "reason", "attempts", "dead at", "detail")
    for r in rows:
        dead_at = r.dead_at.isoformat(timespec="seconds") if r.dead_at else ""
        table.add_row(
            str(r.id),
            r.facility_id,
            r.focus or "-",
            r.reason or "-",
            str(r.attempts),
            dead_at,
            r.detail or "",
        )
    console.print(table)
    summary = ", ".join(f"{f}/{reason or '-'}: {n}" for f, reason, n in counts) or "none"
    console.print(f"dead letters by facility/reason: {summary}")


@dead_cli.command("replay")
def dead_letters_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="inbox row ids (default: all matching)")] = None,
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    reason: Annotated[str | None, typer.Option(help="only this reason slug")] = None,
) -> None:
    """Put dead rows back in the queue with a fresh attempt budget, and wake the workers."""
    from app.ingest.dead_letters import replay_dead_letters
    from app.queue import Doorbell, make_celery

    if not ids and facility is None and reason is None:
        err.print("[red]error[/red] name ids, --facility or --reason (refusing to replay everything blindly)")
        raise typer.Exit(2)
    with _sessions().begin() as session:
        replayed = replay_dead_letters(session, facility=facility, reason=reason, ids=ids)
    settings = get_settings()
    doorbell = Doorbell(make_celery(settings), settings.queue)
    for facility_id, n in sorted(replayed.items()):
        rang = doorbell.ring(facility_id)
        console.print(
            f"{facility_id}: {n} replayed"
            + ("" if rang else " (Redis unreachable: the sweeper will pick them up)")
        )
    if not replayed:
        console.print("nothing matched")


@quarantine_cli.command("list")
def quarantine_list(
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    limit: int = 50,
) -> None:
    """Bodies the receiver kept because they were no recognizable notification (ids and reasons)."""
    from app.ingest.quarantine import count_quarantined, list_quarantined

    with _sessions()() as session:
        rows = list_quarantined(session, facility_id=facility, limit=limit)
        total = count_quarantined(session, facility_id=facility)
    table = Table("id", "facility", "reason", "deliveries", "first", "last", "path", "detail")
    for q in rows:
        table.add_row(
            str(q.id),
            q.facility_id,
            q.reason,
            str(q.deliveries),
            q.received_at.isoformat(timespec="seconds"),
            q.last_received_at.isoformat(timespec="seconds"),
            q.path,
            q.detail,
        )
    console.print(table)
    console.print(f"{total} quarantined")


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
    from devstack.demo import run_demo

    sys.exit(run_demo(changes=changes))


def main() -> None:
    cli()

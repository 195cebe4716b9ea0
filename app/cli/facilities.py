"""``ehr-ingest facilities``: the EHR endpoints we ingest from, declared in YAML, stored in Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli import ledger, render
from app.errors import ConfigurationError

cli = typer.Typer(help="Facilities: the EHRs we ingest from.", no_args_is_help=True)


@cli.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="YAML file with a `facilities:` list")],
) -> None:
    """Create or update the facilities declared in FILE (idempotent).

    The file is validated as a whole before anything is written: an invalid file changes nothing."""
    from app.facilities.service import apply_facilities, load_facilities_file

    try:
        parsed = load_facilities_file(file)
    except ConfigurationError as exc:
        render.fail(exc.detail)
    with ledger.session(write=True) as session:
        result = apply_facilities(session, parsed)
    render.line(
        f"created {len(result.created)}, updated {len(result.updated)}, unchanged {len(result.unchanged)}"
    )
    for fid in result.created:
        render.line(f"  + {fid}")
    for fid in result.updated:
        render.line(f"  ~ {fid}")


@cli.command("list")
def list_() -> None:
    """List facilities with their vendor, base URL and client id (secrets are references, never shown)."""
    from app.facilities.service import list_facilities

    with ledger.session() as session:
        rows = [
            (f.id, f.vendor, f.base_url, str(f.auth.get("client_id", "")), "yes" if f.enabled else "no")
            for f in list_facilities(session)
        ]
    render.table(("id", "vendor", "base url", "client", "enabled"), rows)

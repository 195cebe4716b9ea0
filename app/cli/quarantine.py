"""``ehr-ingest quarantine``: authenticated bodies the receiver kept because they were no notification."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli import ledger, render

cli = typer.Typer(
    help="Quarantine: authenticated bodies that were no recognizable notification.", no_args_is_help=True
)


@cli.command("list")
def list_(
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    limit: int = 50,
) -> None:
    """Bodies the receiver kept because they were no recognizable notification (ids and reasons)."""
    from app.ingest.quarantine import count_quarantined, list_quarantined

    with ledger.session() as session:
        ledger.require_facility(session, facility)
        rows = [
            (
                str(q.id),
                q.facility_id,
                q.reason,
                str(q.deliveries),
                q.received_at.isoformat(timespec="seconds"),
                q.last_received_at.isoformat(timespec="seconds"),
                q.path,
                q.detail,
            )
            for q in list_quarantined(session, facility_id=facility, limit=limit)
        ]
        total = count_quarantined(session, facility_id=facility)
    render.table(("id", "facility", "reason", "deliveries", "first", "last", "path", "detail"), rows)
    render.line(f"{total} quarantined")

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
    """Bodies the receiver kept because they were no recognizable notification, and HL7 v2 messages
    the MLLP listener answered AR (ids and reasons)."""
    from app.hl7v2.queries import count_rejected, list_rejected
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
        v2 = [
            (
                f"v2-{q.id}",
                q.facility_id or "-",
                q.reason,
                str(q.deliveries),
                q.received_at.isoformat(timespec="seconds"),
                q.last_received_at.isoformat(timespec="seconds"),
                f"mllp from {q.peer}",
                q.detail,
            )
            for q in list_rejected(session, facility_id=facility, limit=limit)
        ]
        total_v2 = count_rejected(session, facility_id=facility)
    render.table(("id", "facility", "reason", "deliveries", "first", "last", "path", "detail"), rows + v2)
    render.line(f"{total_v2} HL7 v2 messages rejected (AR)")
    render.line(f"{total} quarantined")

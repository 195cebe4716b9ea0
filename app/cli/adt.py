"""``ehr-ingest adt``: the HL7 v2 ADT messages received (ids, events, status; never PID/PV1 values)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli import ledger, render

cli = typer.Typer(help="HL7 v2 ADT messages received over MLLP.", no_args_is_help=True)


@cli.command("list")
def list_(
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    event: Annotated[str | None, typer.Option(help="only this event type (A08...)")] = None,
    limit: int = 50,
) -> None:
    """The newest ADT messages: control id, event, status, reason and the FHIR patient id once resolved."""
    from app.hl7v2.queries import count_messages, list_messages

    with ledger.session() as session:
        ledger.require_facility(session, facility)
        rows = [
            (
                str(m.id),
                m.facility_id,
                m.event_type or "",
                m.control_id,
                m.received_at.isoformat(timespec="seconds"),
                m.status,
                m.reason or "",
                m.patient_id or "",
            )
            for m in list_messages(session, facility_id=facility, event=event, limit=limit)
        ]
        counts = count_messages(session, facility_id=facility, event=event)
    render.table(("id", "facility", "event", "control id", "received", "status", "reason", "patient"), rows)
    render.line(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "0 messages")

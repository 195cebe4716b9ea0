"""``ehr-ingest dead-letters``: inbox rows that will not be retried on their own, and their replay."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli import ledger, render
from app.settings import get_settings

cli = typer.Typer(help="Dead letters: inbox rows that need a human, and their replay.", no_args_is_help=True)


@cli.command("list")
def list_(
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    reason: Annotated[str | None, typer.Option(help="only this reason slug")] = None,
    limit: int = 100,
) -> None:
    """Dead rows, newest first, with their reason (ids and reasons only, never resource content)."""
    from app.ingest.dead_letters import dead_letter_counts, list_dead_letters

    with ledger.session() as session:
        ledger.require_facility(session, facility)
        rows = list_dead_letters(session, facility=facility, reason=reason, limit=limit)
        counts = dead_letter_counts(session)
    render.table(
        ("id", "facility", "focus", "reason", "attempts", "dead at", "detail"),
        (
            (
                str(r.id),
                r.facility_id,
                r.focus or "-",
                r.reason or "-",
                str(r.attempts),
                r.dead_at.isoformat(timespec="seconds") if r.dead_at else "",
                r.detail or "",
            )
            for r in rows
        ),
    )
    summary = ", ".join(f"{f}/{why or '-'}: {n}" for f, why, n in counts) or "none"
    render.line(f"dead letters by facility/reason: {summary}")


@cli.command("replay")
def replay(
    ids: Annotated[list[int] | None, typer.Argument(help="inbox row ids (default: all matching)")] = None,
    facility: Annotated[str | None, typer.Option(help="only this facility")] = None,
    reason: Annotated[str | None, typer.Option(help="only this reason slug")] = None,
) -> None:
    """Put dead rows back in the queue with a fresh attempt budget, and wake the workers.

    Idempotent: a row already pending or done is left alone. The rows are committed before the doorbell
    rings; if Redis is unreachable the sweeper picks them up."""
    from app.ingest.dead_letters import replay_dead_letters
    from app.queue import Doorbell, make_celery

    if not ids and facility is None and reason is None:
        render.fail("name ids, --facility or --reason (refusing to replay everything blindly)")
    with ledger.session(write=True) as session:
        ledger.require_facility(session, facility)
        replayed = replay_dead_letters(session, facility=facility, reason=reason, ids=ids)
    if not replayed:
        render.line("nothing matched")
        return
    settings = get_settings()
    doorbell = Doorbell(make_celery(settings), settings.queue)
    try:
        for facility_id, n in sorted(replayed.items()):
            rang = doorbell.ring(facility_id)
            render.line(
                f"{facility_id}: {n} replayed"
                + ("" if rang else " (Redis unreachable: the sweeper will pick them up)")
            )
    finally:
        doorbell.close()

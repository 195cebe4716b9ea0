"""Asking for a reconcile durably: a ``reconcile_runs`` row with outcome ``requested``, written in the
caller's transaction (the inbox rows that asked are marked done in the same one), so a lost Celery
message only delays the run until the next tick of the fan-out, which treats it as due."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import ReconcileRun

REQUESTED = "requested"


def request_reconcile(session: Session, facility_id: str, trigger: str) -> None:
    """Record that ``facility_id`` must be reconciled at the next tick (caller commits)."""
    session.add(ReconcileRun(facility_id=facility_id, trigger=trigger, outcome=REQUESTED))
    session.flush()

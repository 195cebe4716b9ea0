"""Which facilities are due a reconcile (read by beat's fan-out; the run checks again under its lock)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Facility
from app.errors import IngestError
from app.reconcile.plan import plan_for
from app.reconcile.probe import load_capabilities
from app.reconcile.service import is_due
from app.vendors.registry import adapter_for


def due_facilities(session: Session, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    due = []
    for facility in session.scalars(select(Facility).where(Facility.enabled).order_by(Facility.id)):
        try:
            capabilities = load_capabilities(session, facility.id)
            plan = plan_for(facility, adapter_for(facility.vendor), capabilities=capabilities)
        except IngestError:
            continue  # a configuration the run would refuse: `reconcile status` shows nothing ran
        if is_due(session, facility, plan, now):
            due.append(facility.id)
    return due

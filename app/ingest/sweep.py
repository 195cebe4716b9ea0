"""The sweeper's query: which facilities have inbox rows due now (pending, not leased or lease expired)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.ingest import queries


def facilities_with_due_work(session: Session) -> list[str]:
    return sorted(session.execute(queries.FACILITIES_WITH_DUE_WORK).scalars().all())

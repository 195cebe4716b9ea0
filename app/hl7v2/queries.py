"""Reusable reads of the ADT tables, for the operator CLI."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import AdtMessage, AdtQuarantined


def list_messages(
    session: Session, *, facility_id: str | None = None, event: str | None = None, limit: int = 50
) -> list[AdtMessage]:
    query = select(AdtMessage).order_by(AdtMessage.id.desc()).limit(limit)
    if facility_id is not None:
        query = query.where(AdtMessage.facility_id == facility_id)
    if event is not None:
        query = query.where(AdtMessage.event_type == event)
    return list(session.scalars(query).all())


def count_messages(
    session: Session, *, facility_id: str | None = None, event: str | None = None
) -> dict[str, int]:
    query = select(AdtMessage.status, func.count()).group_by(AdtMessage.status)
    if facility_id is not None:
        query = query.where(AdtMessage.facility_id == facility_id)
    if event is not None:
        query = query.where(AdtMessage.event_type == event)
    return {status: int(n) for status, n in session.execute(query).all()}


def list_rejected(
    session: Session, *, facility_id: str | None = None, limit: int = 50
) -> list[AdtQuarantined]:
    query = select(AdtQuarantined).order_by(AdtQuarantined.id.desc()).limit(limit)
    if facility_id is not None:
        query = query.where(AdtQuarantined.facility_id == facility_id)
    return list(session.scalars(query).all())


def count_rejected(session: Session, *, facility_id: str | None = None) -> int:
    query = select(func.count()).select_from(AdtQuarantined)
    if facility_id is not None:
        query = query.where(AdtQuarantined.facility_id == facility_id)
    return int(session.scalar(query) or 0)

"""``reconcile_bulk_jobs``: the one ``$export`` job of a facility a run left running, kept for the next
(``app.reconcile.strategies.bulk_since``). Each call is its own short transaction: the row must say what
is committed even when the run dies right after."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import ReconcileBulkJob, ReconcileBulkSeen
from app.db.upsert import upsert
from app.reconcile.strategies.base import KeptJob


class PostgresBulkJobs:
    def __init__(self, sessions: sessionmaker[Session], facility_id: str) -> None:
        self._sessions = sessions
        self._facility_id = facility_id

    def load(self) -> KeptJob | None:
        with self._sessions() as session:
            row = session.get(ReconcileBulkJob, self._facility_id)
            if row is None:
                return None
            return KeptJob(
                row.resource_type,
                row.level,
                row.group_id,
                row.since,
                row.status_url,
                row.kicked_off_at,
                row.file_index,
                row.line,
                row.poll_after,
            )

    def save(self, job: KeptJob) -> None:
        values = {
            "facility_id": self._facility_id,
            "resource_type": job.resource_type,
            "level": job.level,
            "group_id": job.group_id,
            "since": job.since,
            "status_url": job.status_url,
            "kicked_off_at": job.kicked_off_at,
            "poll_after": job.poll_after,
            "file_index": job.file_index,
            "line": job.line,
            "updated_at": datetime.now(UTC),
        }
        with self._sessions.begin() as session:
            session.execute(
                delete(ReconcileBulkSeen).where(ReconcileBulkSeen.facility_id == self._facility_id)
            )
            session.execute(upsert(ReconcileBulkJob, values))

    def defer(self, poll_after: datetime) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(ReconcileBulkJob)
                .where(ReconcileBulkJob.facility_id == self._facility_id)
                .values(poll_after=poll_after, updated_at=datetime.now(UTC))
            )

    def advance(self, file_index: int, line: int, seen: list[str]) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(ReconcileBulkJob)
                .where(ReconcileBulkJob.facility_id == self._facility_id)
                .values(file_index=file_index, line=line, updated_at=datetime.now(UTC))
            )
            if seen:
                session.execute(_ADD_SEEN, {"fid": self._facility_id, "ids": seen})

    def seen(self) -> set[str]:
        with self._sessions() as session:
            rows = session.scalars(
                select(ReconcileBulkSeen.resource_id).where(
                    ReconcileBulkSeen.facility_id == self._facility_id
                )
            )
            return set(rows)

    def clear(self) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(ReconcileBulkJob).where(ReconcileBulkJob.facility_id == self._facility_id))
            session.execute(
                delete(ReconcileBulkSeen).where(ReconcileBulkSeen.facility_id == self._facility_id)
            )


_ADD_SEEN = text(
    """
    INSERT INTO reconcile_bulk_seen (facility_id, resource_id)
    SELECT :fid, i FROM unnest(CAST(:ids AS text[])) AS i
    ON CONFLICT DO NOTHING
    """
)


def kept_type(session: Session, facility_id: str) -> str | None:
    """The resource type of the facility's kept job, if any (the engine runs that type first)."""
    row = session.get(ReconcileBulkJob, facility_id)
    return row.resource_type if row is not None else None

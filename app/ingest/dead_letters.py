"""Dead letters: inbox rows that will not be retried on their own, with the reason, and their replay.

Replay puts rows back to ``pending`` with a fresh attempt budget; it is idempotent (replaying a row that
is already pending or done changes nothing) and the caller rings the doorbell for the facilities named.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db.models import INBOX_DEAD, INBOX_PENDING

# Statuses are interpolated from app.db.models' constants (never user input), hence the S608 noqas.

_LIST = text(
    f"""
    SELECT id, facility_id, focus_type, focus_id, reason, detail, attempts, received_at, done_at
    FROM inbox
    WHERE status = '{INBOX_DEAD}'
      AND (CAST(:facility AS text) IS NULL OR facility_id = :facility)
      AND (CAST(:reason AS text) IS NULL OR reason = :reason)
    ORDER BY done_at DESC NULLS LAST, id DESC
    LIMIT :limit
    """  # noqa: S608
)

_REPLAY = text(
    f"""
    UPDATE inbox
    SET status = '{INBOX_PENDING}', attempts = 0, next_attempt_at = now(), lease_until = NULL, done_at = NULL,
        detail = 'replayed after: ' || coalesce(reason, '-'), reason = NULL
    WHERE status = '{INBOX_DEAD}'
      AND (CAST(:facility AS text) IS NULL OR facility_id = :facility)
      AND (CAST(:reason AS text) IS NULL OR reason = :reason)
      AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
    RETURNING facility_id
    """  # noqa: S608
)

_COUNTS = text(
    f"SELECT facility_id, reason, count(*) AS n FROM inbox WHERE status = '{INBOX_DEAD}' "  # noqa: S608
    "GROUP BY 1, 2 ORDER BY 1, 2"
)


@dataclass(frozen=True)
class DeadLetter:
    id: int
    facility_id: str
    focus: str | None
    reason: str | None
    detail: str | None
    attempts: int
    received_at: datetime
    dead_at: datetime | None


def list_dead_letters(
    session: Session, *, facility: str | None = None, reason: str | None = None, limit: int = 100
) -> list[DeadLetter]:
    rows = session.execute(_LIST, {"facility": facility, "reason": reason, "limit": limit})
    return [
        DeadLetter(
            r.id,
            r.facility_id,
            f"{r.focus_type}/{r.focus_id}" if r.focus_type else None,
            r.reason,
            r.detail,
            r.attempts,
            r.received_at,
            r.done_at,
        )
        for r in rows
    ]


def dead_letter_counts(session: Session) -> list[tuple[str, str | None, int]]:
    return [(r.facility_id, r.reason, int(r.n)) for r in session.execute(_COUNTS)]


def replay_dead_letters(
    session: Session, *, facility: str | None = None, reason: str | None = None, ids: list[int] | None = None
) -> dict[str, int]:
    """Put matching dead rows back in the queue; returns how many per facility."""
    replayed: dict[str, int] = {}
    for row in session.execute(_REPLAY, {"facility": facility, "reason": reason, "ids": ids or None}):
        replayed[row.facility_id] = replayed.get(row.facility_id, 0) + 1
    session.flush()
    return replayed

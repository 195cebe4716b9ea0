"""The durable write before ``AA``: ADT messages committed to ``adt_inbox`` (group commit), refused ones
to ``adt_quarantine``.

Concurrent messages (one in flight per connection, many connections) are committed together, one
transaction per batch: a connection's ``AA`` leaves only once the batch holding its message committed.
A batch that fails is retried row by row, so one sender's poison row fails alone. A duplicate MSH-10 for
the facility is stored once (``ON CONFLICT DO NOTHING``) and acknowledged again. Every failure reaches
the waiting connection, which then answers ``AE`` (never ``AA``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from app.db.models import INBOX_DONE, INBOX_PENDING
from app.ingest.group_commit import CONNECT_TIMEOUT_S, GroupCommit

_COLUMNS = {
    "facility_id": "text",
    "control_id": "text",
    "raw": "text",
    "version": "text",
    "message_type": "text",
    "event_type": "text",
    "message_time": "timestamptz",
    "mrn": "text",
    "prior_mrn": "text",
    "visit_number": "text",
    "patient_class": "text",
    "location": "text",
    "admit_time": "timestamptz",
    "discharge_time": "timestamptz",
    "parsed": "boolean",
    "status": "text",
}
#: The PID/PV1/MRG columns and their SQL types: filled by the worker's parse
#: (``app.hl7v2.service.parse_fields``), not by the listener.
FIELD_TYPES = {
    c: _COLUMNS[c]
    for c in ("mrn", "prior_mrn", "visit_number", "patient_class", "location", "admit_time", "discharge_time")
}
_NAMES = ", ".join(_COLUMNS)
_INSERT = f"""
INSERT INTO adt_inbox ({_NAMES})
SELECT {_NAMES} FROM jsonb_to_recordset(%s::jsonb) AS r({", ".join(f"{c} {t}" for c, t in _COLUMNS.items())})
ON CONFLICT (facility_id, control_id) DO NOTHING
RETURNING facility_id, control_id
"""  # noqa: S608 - assembled from the constants above
_QUARANTINE = """
INSERT INTO adt_quarantine (facility_id, peer, reason, detail, raw_sha256, raw)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (raw_sha256) DO UPDATE SET deliveries = adt_quarantine.deliveries + 1, last_received_at = now()
RETURNING id
"""


@dataclass(frozen=True)
class AdtRow:
    """A message as the listener commits it: MSH read; the PID/PV1/MRG columns are filled by the
    worker's parse (``parsed`` false) unless given here."""

    facility_id: str
    control_id: str
    raw: str
    version: str | None
    message_type: str | None
    event_type: str | None
    message_time: datetime | None
    work: bool  # a "patient changed" event: pending work; else stored done (kept for adt_events)
    mrn: str | None = None
    prior_mrn: str | None = None
    visit_number: str | None = None
    patient_class: str | None = None
    location: str | None = None
    admit_time: datetime | None = None
    discharge_time: datetime | None = None
    parsed: bool = False

    def record(self) -> dict[str, Any]:
        # Not dataclasses.asdict (a deep copy per message, on the ACK path).
        values: dict[str, Any] = {}
        for key in _FIELDS:
            value = getattr(self, key)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, str) and "\x00" in value:
                value = value.replace("\x00", "\ufffd")  # Postgres text holds no NUL
            values[key] = value
        values["status"] = INBOX_PENDING if self.work else INBOX_DONE
        return values


_FIELDS = [c for c in _COLUMNS if c != "status"]


class AdtWriter(GroupCommit[AdtRow, bool]):
    """``await write(row)`` returns True when this call stored the row, False for a duplicate; raises
    when it could not be committed, and ``WriterStopped`` at once after ``stop`` (nothing stored: the
    listener answers AE, so the sender's engine resends to the next listener). The group commit is
    the receiver's (``app.ingest.group_commit``)."""

    def __init__(self, conninfo: str, *, max_batch: int = 256, slots: int = 1) -> None:
        # One writer by default: senders keep one message in flight per connection, so whatever arrives
        # while a commit runs makes the next batch; two halve the batches and cost the listener and
        # Postgres about 10 % more CPU per message (measured with bench/mllp.py's load). Autocommit: the
        # batch is one statement, its own transaction, committed in one round trip.
        super().__init__(conninfo, max_batch=max_batch, slots=slots, name="adt-writer", autocommit=True)
        self._quarantine_conn: psycopg.AsyncConnection[Any] | None = None

    async def write(self, row: AdtRow) -> bool:
        return await self.submit(row)

    async def stop(self) -> None:
        await super().stop()
        if self._quarantine_conn is not None:
            await self._quarantine_conn.close()
            self._quarantine_conn = None

    async def quarantine(
        self, *, facility_id: str | None, peer: str, reason: str, detail: str, raw: bytes
    ) -> int:
        """Keep a refused message (committed when this returns); its id."""
        conn = await self._connect(-1)
        digest = hashlib.sha256(raw).hexdigest()
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    _QUARANTINE, (facility_id, peer[:64], reason, detail[:500], digest, raw)
                )
                row = await cur.fetchone()
        except psycopg.Error:
            await conn.close()
            raise
        assert row is not None
        return int(row[0])

    async def _connect(self, slot: int) -> psycopg.AsyncConnection[Any]:
        """The quarantine's connection (refused messages are rare: no group commit for them)."""
        conn = self._quarantine_conn
        if conn is None or conn.closed or conn.broken:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, connect_timeout=CONNECT_TIMEOUT_S, row_factory=namedtuple_row, autocommit=True
            )
            self._quarantine_conn = conn
        return conn

    async def commit_batch(self, slot: int, items: list[AdtRow]) -> list[bool | BaseException]:
        try:
            stored = await self._insert(slot, items)
        except psycopg.OperationalError as exc:  # the database: every waiting connection answers AE
            return [exc] * len(items)
        except psycopg.Error as exc:
            if len(items) == 1:
                return [exc]
            answers: list[bool | BaseException] = []
            for row in items:  # one row's data failed the batch: each alone, so it fails alone
                answers += await self.commit_batch(slot, [row])
            return answers
        answers = []
        for row in items:
            key = (row.facility_id, row.control_id.replace("\x00", "\ufffd"))
            answers.append(key in stored)
            stored.discard(key)  # the same message twice in one batch: the first stored it
        return answers

    async def _insert(self, slot: int, rows: list[AdtRow]) -> set[tuple[str, str]]:
        conn = await self.connection(slot)
        try:
            cur = await conn.execute(_INSERT, (json.dumps([r.record() for r in rows]),))
            return {(r.facility_id, r.control_id) for r in await cur.fetchall()}
        except psycopg.OperationalError:
            await self.drop_connection(slot)
            raise

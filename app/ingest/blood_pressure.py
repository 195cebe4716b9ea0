"""Blood-pressure readings kept at store time: the one implementation of pairing is the Python one
(``app.fhir.normalize.blood_pressure``, through the vendor adapter); this module runs it over the stored
Observations that could pair with a written one and replaces their rows in ``blood_pressure_pairs``, which
the ``blood_pressure_readings`` view reads.

Candidates are grouped by (facility, subject, ``effective_key``): the pairing key's instant, computed by
the same Python rule into the Observation summary, so a write re-pairs one moment of one patient, not the
patient's whole history. Within a group the pairing (encounter, duplicates, panels) is all Python.

``blood_pressure_members`` remembers the group each paired Observation was last paired in, so a write
that moves an Observation to another instant (or makes it no blood pressure) also re-pairs the group it
left.

Concurrency: two workers storing the two halves of one reading in separate transactions must not each see
only their own half. Each refresh takes a transaction-scoped advisory lock per group, in key order, before
it reads: the second writer waits for the first to commit, then sees both halves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

Pairing = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
#: (facility_id, subject, effective_key)
GroupKey = tuple[str, str | None, str | None]

# Groups whose readings may change: those of the written blood-pressure Observations (tombstones keep
# their last summary), and the groups a written Observation was last paired in (its time or code moved).
# One primary-key probe per written id (LATERAL ... OFFSET 0 keeps the planner from flattening it): left to
# itself, a planner whose statistics still describe a smaller table (a backfill into an empty database)
# hashes every blood-pressure Observation of the facility for each batch, a cost that grows with the table.
_AFFECTED = text(
    """
    SELECT r.facility_id, r.normalized->>'subject' AS subject, r.normalized->>'effective_key' AS effective_key
    FROM unnest(CAST(:facility_id AS text[]), CAST(:resource_id AS text[])) AS x(facility_id, resource_id)
    CROSS JOIN LATERAL (
        SELECT r.facility_id, r.normalized FROM resources r
        WHERE r.facility_id = x.facility_id AND r.resource_type = 'Observation'
          AND r.resource_id = x.resource_id
        OFFSET 0
    ) r
    WHERE r.normalized->>'bp_role' IS NOT NULL
    UNION
    SELECT m.facility_id, m.subject, m.effective_key
    FROM unnest(CAST(:facility_id AS text[]), CAST(:resource_id AS text[])) AS x(facility_id, resource_id)
    CROSS JOIN LATERAL (
        SELECT m.facility_id, m.subject, m.effective_key FROM blood_pressure_members m
        WHERE m.facility_id = x.facility_id AND m.resource_id = x.resource_id
        OFFSET 0
    ) m
    """
)

_LOCK = text(
    """
    SELECT count(pg_advisory_xact_lock(hashtextextended(
             concat_ws('|', 'bp', f, coalesce(s, ''), coalesce(k, '')), 0)))
    FROM (SELECT f, s, k
          FROM unnest(CAST(:facility_id AS text[]), CAST(:subject AS text[]), CAST(:effective_key AS text[]))
            AS x(f, s, k)
          ORDER BY f, s, k) ordered
    """
)


_OBSERVATIONS = text(
    """
    SELECT r.facility_id, r.resource_id, r.normalized->>'subject' AS subject,
           r.normalized->>'effective_key' AS effective_key, r.normalized->>'bp_role' AS bp_role, r.resource
    FROM resources r
    JOIN unnest(CAST(:facility_id AS text[]), CAST(:subject AS text[]), CAST(:effective_key AS text[]))
      AS x(facility_id, subject, effective_key)
      ON r.facility_id = x.facility_id
     AND coalesce(r.normalized->>'subject', '') = coalesce(x.subject, '')
     AND coalesce(r.normalized->>'effective_key', '') = coalesce(x.effective_key, '')
    WHERE r.resource_type = 'Observation' AND NOT r.deleted AND r.normalized->>'bp_role' IS NOT NULL
    ORDER BY r.resource_id
    """
)

_DELETE = text(
    """
    WITH x AS (
      SELECT * FROM unnest(CAST(:facility_id AS text[]), CAST(:subject AS text[]),
                           CAST(:effective_key AS text[])) AS x(facility_id, subject, effective_key)
    ), readings AS (
      DELETE FROM blood_pressure_pairs b USING x
      WHERE b.facility_id = x.facility_id AND coalesce(b.subject, '') = coalesce(x.subject, '')
        AND coalesce(b.effective_key, '') = coalesce(x.effective_key, '')
    )
    DELETE FROM blood_pressure_members m USING x
    WHERE m.facility_id = x.facility_id AND coalesce(m.subject, '') = coalesce(x.subject, '')
      AND coalesce(m.effective_key, '') = coalesce(x.effective_key, '')
    """
)

_INSERT = text(
    """
    INSERT INTO blood_pressure_pairs (facility_id, subject, effective_key, effective, encounter, systolic_id,
                                      diastolic_id, unit, source_ids)
    VALUES (:facility_id, :subject, :effective_key, :effective, :encounter, :systolic_id, :diastolic_id,
            :unit, CAST(:source_ids AS text[]))
    """
)

_INSERT_MEMBERS = text(
    """
    INSERT INTO blood_pressure_members (facility_id, resource_id, subject, effective_key)
    VALUES (:facility_id, :resource_id, :subject, :effective_key)
    ON CONFLICT (facility_id, resource_id)
    DO UPDATE SET subject = excluded.subject, effective_key = excluded.effective_key
    """
)

_ALL_GROUPS = text(
    """
    SELECT DISTINCT facility_id, normalized->>'subject' AS subject,
           normalized->>'effective_key' AS effective_key
    FROM resources WHERE resource_type = 'Observation' AND normalized->>'bp_role' IS NOT NULL
    """
)


def refresh_readings(db: Session | Connection, written: Iterable[tuple[str, str, str]], pair: Pairing) -> int:
    """Re-pair the groups touched by ``written`` ((facility_id, resource_type, resource_id) just stored,
    live or tombstoned) with ``pair``; returns the number of readings now kept for them. Caller commits."""
    observations = [(f, i) for f, t, i in written if t == "Observation"]
    if not observations:
        return 0
    params = {"facility_id": [f for f, _ in observations], "resource_id": [i for _, i in observations]}
    return repair(db, [tuple(r) for r in db.execute(_AFFECTED, params)], pair)


def refresh_all(db: Session | Connection, pair: Pairing, *, chunk: int = 1000) -> int:
    """Re-pair every group with a blood-pressure Observation (a migration's backfill), ``chunk`` groups
    at a time so that memory stays bounded."""
    groups = [tuple(r) for r in db.execute(_ALL_GROUPS)]
    return sum(repair(db, groups[i : i + chunk], pair) for i in range(0, len(groups), chunk))


def repair(db: Session | Connection, groups: Sequence[tuple[Any, ...]], pair: Pairing) -> int:
    """Replace the readings of ``groups`` with ``pair`` over their live blood-pressure Observations."""
    keys = sorted({(str(f), s, k) for f, s, k in groups}, key=lambda g: (g[0], g[1] or "", g[2] or ""))
    if not keys:
        return 0
    params = {
        "facility_id": [f for f, _, _ in keys],
        "subject": [s for _, s, _ in keys],
        "effective_key": [k for _, _, k in keys],
    }
    db.execute(_LOCK, params)
    found: dict[GroupKey, list[dict[str, Any]]] = {}
    # by the id the pairing reports (the body's) → (the stored resource_id the view joins on, its role)
    sources: dict[tuple[str, str], tuple[str, str]] = {}
    for row in db.execute(_OBSERVATIONS, params):
        if isinstance(row.resource, dict):
            found.setdefault((row.facility_id, row.subject, row.effective_key), []).append(row.resource)
            sources[(row.facility_id, str(row.resource.get("id", "")))] = (row.resource_id, row.bp_role)
    db.execute(_DELETE, params)
    rows = [_row(key, reading, sources) for key, resources in found.items() for reading in pair(resources)]
    if rows:
        db.execute(_INSERT, rows)
        members = {(r["facility_id"], i): r for r in rows for i in r["source_ids"]}
        db.execute(
            _INSERT_MEMBERS,
            [
                {
                    "facility_id": f,
                    "resource_id": i,
                    "subject": r["subject"],
                    "effective_key": r["effective_key"],
                }
                for (f, i), r in members.items()
            ],
        )
    return len(rows)


def _row(
    key: GroupKey, reading: dict[str, Any], sources: dict[tuple[str, str], tuple[str, str]]
) -> dict[str, Any]:
    """A reading as stored: which Observation gives each value (the view reads the exact number from its
    summary, as the ``observations`` view does), not the value itself."""
    facility_id, subject, effective_key = key
    ids = [sources.get((facility_id, str(i)), (str(i), "")) for i in reading["source_ids"]]
    systolic_id: str | None
    diastolic_id: str | None
    if ids and ids[0][1] == "panel":
        systolic_id = diastolic_id = ids[0][0]
    else:
        systolic_id = next((rid for rid, role in ids if role == "systolic"), None)
        diastolic_id = next((rid for rid, role in ids if role == "diastolic"), None)
    return {
        "facility_id": facility_id,
        "subject": subject,
        "effective_key": effective_key,
        "effective": reading.get("effective"),
        "encounter": reading.get("encounter"),
        "systolic_id": systolic_id,
        "diastolic_id": diastolic_id,
        "unit": reading.get("unit"),
        "source_ids": [rid for rid, _ in ids],
    }

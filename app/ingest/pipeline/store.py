"""Version-guarded writes of fetched resources into the ledger (DESIGN.md rules 2 and 3).

Every write goes through ``store_versions``, the last stage of the one pipeline (``app.ingest.pipeline``).
Concurrent writers converge: the guard lives in the upsert's WHERE clause, not in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.fhir import pgsafe
from app.fhir.resources import content_hash, resource_meta
from app.ingest import queries
from app.ingest.pipeline.observed import Observed


@dataclass
class StoreStats:
    applied: int = 0
    unchanged: int = 0
    stale: int = 0
    tombstones: int = 0
    absorbed: int = 0  # live versions a tombstone now carries (newer than its body, observed before it)
    by_type: dict[str, int] = field(default_factory=dict)
    # Payloads that would have made a tombstoned resource live again: the caller must read them instead.
    unverified: set[tuple[str, str]] = field(default_factory=set)


_COLUMNS = (
    "facility_id",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "content_hash",
    "deleted",
    "resource",
    "fetched_at",
    "normalized",
    "issues",
    "deletion",
    "from_payload",
)
_HISTORY_COLUMNS = (*_COLUMNS[:9], "version_key", "deletion")
_FEED_COLUMNS = ("facility_id", "resource_type", "resource_id", "version_id", "deleted")


def _row(item: Observed) -> dict[str, Any]:
    version_id, last_updated = None, None
    if item.resource is not None:
        meta = resource_meta(item.resource, expected_type=item.resource_type)
        version_id, last_updated = meta.version_id, meta.last_updated
    return {
        "facility_id": item.facility_id,
        "resource_type": item.resource_type,
        "resource_id": item.resource_id,
        "version_id": version_id,
        "last_updated": last_updated,
        "content_hash": content_hash(item.resource),
        "deleted": item.resource is None,
        "resource": pgsafe.dumps(item.resource) if item.resource is not None else None,
        "fetched_at": item.fetched_at,
        "normalized": pgsafe.dumps(item.summary) if item.summary is not None else None,
        "issues": pgsafe.dumps(item.issues) if item.issues else None,
        "deletion": item.deletion if item.resource is None else None,
        "from_payload": item.from_payload,
    }


def _rounds(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split rows so that no statement touches a resource twice (Postgres refuses that in one upsert);
    versions of one resource go oldest first, so each round's guard sees the previous round's result."""
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["facility_id"], row["resource_type"], row["resource_id"]), []).append(row)
    rounds: list[list[dict[str, Any]]] = []
    for versions in by_key.values():
        # In the order they were observed; the guard still refuses an older lastUpdated seen later.
        versions.sort(key=lambda r: r["fetched_at"])
        for index, row in enumerate(versions):
            if index == len(rounds):
                rounds.append([])
            rounds[index].append(row)
    # The same key order in every transaction: two workers upserting overlapping batches cannot deadlock.
    for batch in rounds:
        batch.sort(key=lambda r: (r["facility_id"], r["resource_type"], r["resource_id"]))
    return rounds


def _element(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return '"' + value.isoformat() + '"'  # aware (fetched_at, lastUpdated): the offset is kept
    raise TypeError(f"no array literal for a {type(value).__name__}")  # a bug: never stringified quietly


def _array_literal(values: list[Any]) -> str:
    """``values`` as a Postgres array literal, for ``CAST(:x AS text[])`` (also ``timestamptz[]``,
    ``boolean[]``: Postgres parses the elements). psycopg's list adapter costs a Python call per element
    (per datetime several), and per double quote it escapes in a JSON body: the largest CPU cost of a
    backfill. The rule is the same (strings and instants quoted, ``\\`` and ``"`` backslash-escaped,
    NULL bare), done by ``str.replace``."""
    return "{" + ",".join(map(_element, values)) + "}"


def _arrays(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[str, str]:
    return {column: _array_literal([row[column] for row in rows]) for column in columns}


def store_versions(session: Session, observed: list[Observed]) -> StoreStats:
    """Apply ``observed`` with set-based statements: one upsert per round (usually one), one history
    insert, one read to tell stale writes from repeats. Caller commits."""
    stats = StoreStats()
    if not observed:
        return stats
    for rows in _rounds([_row(item) for item in observed]):
        _store_round(session, rows, stats)
    session.flush()
    return stats


def _store_round(session: Session, rows: list[dict[str, Any]], stats: StoreStats) -> None:
    # (type, id) -> the row as it is now: (deleted, version_id, fetched_at)
    applied = {
        (r.resource_type, r.resource_id): (r.deleted, r.version_id, r.fetched_at)
        for r in session.execute(queries.UPSERT_RESOURCES, _arrays(rows, _COLUMNS))
    }
    skipped = [row for row in rows if (row["resource_type"], row["resource_id"]) not in applied]
    current = {}
    if skipped:
        current = {
            (r.resource_type, r.resource_id): (r.content_hash, r.deleted, r.fetched_at)
            for r in session.execute(
                queries.CURRENT_HASHES, _arrays(skipped, ("facility_id", "resource_type", "resource_id"))
            )
        }
    history = []
    for row in rows:
        key = (row["resource_type"], row["resource_id"])
        now_deleted, tombstone_at = _classify(row, key, applied, current, stats)
        revives = tombstone_at is not None and row["fetched_at"] > tombstone_at
        if row["from_payload"] and now_deleted and revives:
            stats.unverified.add(key)  # it would have made the tombstone live: a read decides
        if not row["deleted"] or key in applied:
            version_id = applied[key][1] if row["deleted"] else row["version_id"]
            history.append({**row, "version_id": version_id, "version_key": _version_key(row)})
    if not history:
        return
    new = {
        (r.resource_type, r.resource_id, r.version_key)
        for r in session.execute(queries.INSERT_HISTORIES, _arrays(history, _HISTORY_COLUMNS))
    }
    # A version new to history that changed nothing current (it came after a newer one) is fed here;
    # every other change was fed by the trigger on resources.
    unfed = [
        h
        for h in history
        if (h["resource_type"], h["resource_id"], h["version_key"]) in new
        and (h["resource_type"], h["resource_id"]) not in applied
    ]
    if unfed:
        session.execute(queries.FEED_VERSIONS, _arrays(unfed, _FEED_COLUMNS))


def _classify(
    row: dict[str, Any],
    key: tuple[str, str],
    applied: dict[tuple[str, str], tuple[bool, str | None, datetime]],
    current: dict[tuple[str, str], tuple[str, bool, datetime | None]],
    stats: StoreStats,
) -> tuple[bool, datetime | None]:
    """Count ``row``'s outcome; return whether the resource is now a tombstone, and since when."""
    if key in applied:
        deleted, _, fetched_at = applied[key]
        if deleted and not row["deleted"]:
            stats.absorbed += 1
        else:
            stats.applied += 1
            stats.tombstones += int(row["deleted"])
            stats.by_type[row["resource_type"]] = stats.by_type.get(row["resource_type"], 0) + 1
        return deleted, fetched_at
    content, deleted, seen_at = current.get(key, ("", False, None))
    if (content, deleted) == (row["content_hash"], row["deleted"]):
        stats.unchanged += 1
    else:
        stats.stale += 1
    return deleted, seen_at if deleted else None


def _version_key(row: dict[str, Any]) -> str:
    """What makes a version distinct in history: versionId when the server gives one, else the content."""
    if row["deleted"]:
        return f"deleted|{row['fetched_at'].isoformat()}"
    return str(row["version_id"]) if row["version_id"] is not None else f"hash|{row['content_hash']}"

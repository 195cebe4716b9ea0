"""Reusable SQL for the inbox queue and the version-guarded store."""

from __future__ import annotations

from sqlalchemy import text

from app.db.models import INBOX_DEAD, INBOX_DONE, INBOX_PENDING

# The statuses are interpolated from app.db.models' constants (never user input), hence the S608 noqas.

# A claimed row is hidden by pushing next_attempt_at to the end of its lease: the partial index on
# (facility_id, next_attempt_at) WHERE status = INBOX_PENDING is then the whole queue scan, and a worker
# that dies simply lets the lease run out. Leases are short and renewed while the batch is in flight
# (RENEW_LEASE, app.ingest.lease), so a dead worker's rows come back within seconds. Each claim writes a
# fresh token; outcomes (MARK_*) apply only under the current token, so a worker whose lease ran out
# mid-batch cannot overwrite the new owner's.
# The payload comes back as text, for app.fhir.jsonwire to decode: the driver's JSON loader would make
# its decimals floats. The reason is the row's previous outcome (a 404 being re-checked).
CLAIM = text(
    f"""
    UPDATE inbox AS i
    SET lease_until = now() + :lease, next_attempt_at = now() + :lease, attempts = i.attempts + 1,
        claim_token = CAST(:token AS uuid)
    WHERE i.id IN (
        SELECT id FROM inbox
        WHERE facility_id = :facility_id AND status = '{INBOX_PENDING}' AND next_attempt_at <= now()
        ORDER BY next_attempt_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING i.id, i.focus_type, i.focus_id, i.focus_identifier, i.interaction,
              i.payload::text AS payload, i.attempts, i.received_at, i.claim_token, i.reason,
              i.notified_version, i.notified_at
    """  # noqa: S608
)

# The heartbeat of a batch in flight: push the lease of the rows still held under this claim (pending, not
# yet given an outcome). SKIP LOCKED: a row locked by the batch's own outcome transaction is being
# finished, and waiting for it could deadlock the two transactions of one worker.
RENEW_LEASE = text(
    f"""
    UPDATE inbox SET lease_until = now() + :lease, next_attempt_at = now() + :lease
    WHERE id IN (
        SELECT id FROM inbox
        WHERE id = ANY(:ids) AND status = '{INBOX_PENDING}' AND claim_token = CAST(:token AS uuid)
          AND lease_until IS NOT NULL
        FOR UPDATE SKIP LOCKED
    )
    """  # noqa: S608
)

MARK_DONE = text(
    f"""
    UPDATE inbox
    SET status = '{INBOX_DONE}', done_at = now(), lease_until = NULL, reason = :reason, detail = NULL
    WHERE id = ANY(:ids) AND status = '{INBOX_PENDING}' AND claim_token = CAST(:token AS uuid)
    """  # noqa: S608
)

MARK_RETRY = text(
    f"""
    UPDATE inbox SET lease_until = NULL, next_attempt_at = now() + :delay, reason = :reason, detail = :detail
    WHERE id = ANY(:ids) AND status = '{INBOX_PENDING}' AND claim_token = CAST(:token AS uuid)
    """  # noqa: S608
)

MARK_DEAD = text(
    f"""
    UPDATE inbox
    SET status = '{INBOX_DEAD}', done_at = now(), lease_until = NULL, reason = :reason, detail = :detail
    WHERE id = ANY(:ids) AND status = '{INBOX_PENDING}' AND claim_token = CAST(:token AS uuid)
    """  # noqa: S608
)

# Disabled facilities keep their rows (nothing accepted is dropped) until they are enabled again.
FACILITIES_WITH_DUE_WORK = text(
    f"""
    SELECT DISTINCT i.facility_id FROM inbox i JOIN facilities f ON f.id = i.facility_id AND f.enabled
    WHERE i.status = '{INBOX_PENDING}' AND i.next_attempt_at <= now()
    """  # noqa: S608
)

# DESIGN.md rule 3. A write applies when it changes something and is not older than what is stored:
# - between live versions, a newer meta.lastUpdated wins; without lastUpdated on either side (a vendor
#   that sends no meta) or with equal ones, the later observation wins;
# - a deletion is a fact about the moment it was observed: it overrides only what was observed before it,
#   and only a later *read* overrides it (a re-creation). A payload (``from_payload``: sent, not read)
#   never makes a tombstone live again: the caller reads the resource first (issue 9 item 1);
# - a live version that cannot revive a tombstone but is newer than the body the tombstone keeps
#   (lastUpdated, or a tombstone with no body yet) is absorbed: the row stays deleted and now carries
#   that version, so a tombstone always carries the newest version known, and the change feed (the
#   trigger on ``resources``) announces it (issue 9 item 10).
# A tombstone keeps the last known body and version for consumers, and ``deletion`` says why it is one.
# One statement for a whole batch; the caller guarantees each resource appears at most once in it.
# RETURNING gives the row as it is now: ``deleted`` with a live write means it was absorbed.
_REVIVES = "(NOT excluded.from_payload AND excluded.fetched_at > r.fetched_at)"
_ABSORBS = f"(r.deleted AND NOT excluded.deleted AND NOT {_REVIVES})"
UPSERT_RESOURCES = text(
    f"""
    INSERT INTO resources AS r (facility_id, resource_type, resource_id, version_id, last_updated,
                                content_hash, deleted, resource, fetched_at, ingested_at, normalized, issues,
                                deletion, from_payload)
    SELECT x.facility_id, x.resource_type, x.resource_id, x.version_id, x.last_updated, x.content_hash,
           x.deleted, CAST(x.resource AS jsonb), x.fetched_at, now(), CAST(x.normalized AS jsonb),
           CAST(x.issues AS jsonb), x.deletion, x.from_payload
    FROM
    unnest(CAST(:facility_id AS text[]), CAST(:resource_type AS text[]), CAST(:resource_id AS text[]),
           CAST(:version_id AS text[]), CAST(:last_updated AS timestamptz[]), CAST(:content_hash AS text[]),
           CAST(:deleted AS boolean[]), CAST(:resource AS text[]), CAST(:fetched_at AS timestamptz[]),
           CAST(:normalized AS text[]), CAST(:issues AS text[]), CAST(:deletion AS text[]),
           CAST(:from_payload AS boolean[]))
    AS x(facility_id, resource_type, resource_id, version_id, last_updated, content_hash, deleted, resource,
         fetched_at, normalized, issues, deletion, from_payload)
    ON CONFLICT (facility_id, resource_type, resource_id) DO UPDATE SET
        version_id = CASE WHEN excluded.deleted THEN r.version_id ELSE excluded.version_id END,
        last_updated = CASE WHEN excluded.deleted THEN r.last_updated ELSE excluded.last_updated END,
        content_hash = CASE WHEN {_ABSORBS} THEN r.content_hash ELSE excluded.content_hash END,
        deleted = excluded.deleted OR {_ABSORBS},
        resource = CASE WHEN excluded.deleted THEN r.resource ELSE excluded.resource END,
        fetched_at = CASE WHEN {_ABSORBS} THEN r.fetched_at ELSE excluded.fetched_at END,
        ingested_at = now(),
        normalized = CASE WHEN excluded.deleted THEN r.normalized ELSE excluded.normalized END,
        issues = CASE WHEN excluded.deleted THEN r.issues ELSE excluded.issues END,
        deletion = CASE WHEN {_ABSORBS} THEN r.deletion ELSE excluded.deletion END,
        from_payload = CASE WHEN excluded.deleted THEN r.from_payload ELSE excluded.from_payload END
    WHERE CASE
        WHEN excluded.deleted THEN NOT r.deleted AND excluded.fetched_at > r.fetched_at
        WHEN r.deleted THEN {_REVIVES}
            OR (r.version_id IS DISTINCT FROM excluded.version_id OR r.resource IS NULL)
               AND (r.resource IS NULL OR excluded.last_updated > r.last_updated)
        WHEN r.content_hash = excluded.content_hash
             AND r.version_id IS NOT DISTINCT FROM excluded.version_id THEN false
        WHEN excluded.last_updated IS NOT NULL AND r.last_updated IS NOT NULL
             AND excluded.last_updated <> r.last_updated THEN excluded.last_updated > r.last_updated
        ELSE excluded.fetched_at > r.fetched_at
      END
    RETURNING r.resource_type, r.resource_id, r.deleted, r.version_id, r.fetched_at
    """  # noqa: S608 - the interpolated fragments are the constants above
)

# The stored resources among some keys (three arrays of one length: facility, type, id), one primary-key
# probe per key (LATERAL ... OFFSET 0 keeps the planner from flattening it into a join): left to itself, a
# planner whose statistics still describe a smaller table (a backfill into an empty database) hashes every
# resource of the facility for each batch, a cost that grows with the table.
_RESOURCES_BY_KEY = """
    FROM unnest(CAST(:facility_id AS text[]), CAST(:resource_type AS text[]), CAST(:resource_id AS text[]))
         AS k(facility_id, resource_type, resource_id)
    CROSS JOIN LATERAL (
        SELECT * FROM resources r
        WHERE r.facility_id = k.facility_id AND r.resource_type = k.resource_type
          AND r.resource_id = k.resource_id
        OFFSET 0
    ) r
"""

CURRENT_HASHES = text(
    f"SELECT r.resource_type, r.resource_id, r.content_hash, r.deleted, r.fetched_at {_RESOURCES_BY_KEY}"
)

# Tombstoned resources among some keys: a payload for one of them is read instead (issue 9 item 1).
TOMBSTONED = text(f"SELECT r.resource_type, r.resource_id {_RESOURCES_BY_KEY} WHERE r.deleted")

# What is stored of some resources (the drain's check of a read older than notified).
STORED_VERSIONS = text(
    f"SELECT r.resource_type, r.resource_id, r.version_id, r.last_updated, r.deleted {_RESOURCES_BY_KEY}"
)

INSERT_HISTORIES = text(
    """
    INSERT INTO resource_history (facility_id, resource_type, resource_id, version_key, version_id,
                                  last_updated, content_hash, deleted, resource, fetched_at, deletion)
    SELECT x.facility_id, x.resource_type, x.resource_id, x.version_key, x.version_id, x.last_updated,
           x.content_hash, x.deleted, CAST(x.resource AS jsonb), x.fetched_at, x.deletion
    FROM unnest(CAST(:facility_id AS text[]), CAST(:resource_type AS text[]), CAST(:resource_id AS text[]),
                CAST(:version_id AS text[]), CAST(:last_updated AS timestamptz[]),
                CAST(:content_hash AS text[]), CAST(:deleted AS boolean[]), CAST(:resource AS text[]),
                CAST(:fetched_at AS timestamptz[]), CAST(:version_key AS text[]), CAST(:deletion AS text[]))
         AS x(facility_id, resource_type, resource_id, version_id, last_updated, content_hash, deleted,
              resource, fetched_at, version_key, deletion)
    ON CONFLICT ON CONSTRAINT uq_resource_history_version DO NOTHING
    RETURNING resource_type, resource_id, version_key
    """
)

# A version new to history that did not change the current row (it arrived after a newer one) is still
# a version consumers have not been told of: announced like the trigger on ``resources`` announces the
# others (same table, same channel, ids only), so every distinct version in history is in the feed.
FEED_VERSIONS = text(
    """
    WITH fed AS (
        INSERT INTO change_feed (facility_id, resource_type, resource_id, version_id, deleted)
        SELECT * FROM unnest(CAST(:facility_id AS text[]), CAST(:resource_type AS text[]),
                             CAST(:resource_id AS text[]), CAST(:version_id AS text[]),
                             CAST(:deleted AS boolean[]))
        RETURNING seq, facility_id, resource_type, resource_id, deleted
    )
    SELECT pg_notify('ehr_ingest_changes', json_build_object(
        'seq', seq, 'facility_id', facility_id, 'resource_type', resource_type,
        'resource_id', resource_id, 'deleted', deleted)::text)
    FROM fed
    """
)

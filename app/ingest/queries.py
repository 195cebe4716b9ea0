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
    RETURNING i.id, i.focus_type, i.focus_id, i.focus_identifier, i.interaction, i.payload, i.attempts,
              i.received_at, i.claim_token
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
# a newer meta.lastUpdated wins; without lastUpdated on either side (a vendor that sends no meta) or with
# equal ones, the later fetch wins; against or for a tombstone, the later observation wins. A tombstone
# keeps the last known body and version for consumers. One statement for a whole
# batch; the caller guarantees each resource appears at most once in it.
UPSERT_RESOURCES = text(
    """
    INSERT INTO resources AS r (facility_id, resource_type, resource_id, version_id, last_updated,
                                content_hash, deleted, resource, fetched_at, ingested_at, normalized, issues)
    SELECT x.facility_id, x.resource_type, x.resource_id, x.version_id, x.last_updated, x.content_hash,
           x.deleted, CAST(x.resource AS jsonb), x.fetched_at, now(), CAST(x.normalized AS jsonb),
           CAST(x.issues AS jsonb)
    FROM
    unnest(CAST(:facility_id AS text[]), CAST(:resource_type AS text[]), CAST(:resource_id AS text[]),
           CAST(:version_id AS text[]), CAST(:last_updated AS timestamptz[]), CAST(:content_hash AS text[]),
           CAST(:deleted AS boolean[]), CAST(:resource AS text[]), CAST(:fetched_at AS timestamptz[]),
           CAST(:normalized AS text[]), CAST(:issues AS text[]))
    AS x(facility_id, resource_type, resource_id, version_id, last_updated, content_hash, deleted, resource,
         fetched_at, normalized, issues)
    ON CONFLICT (facility_id, resource_type, resource_id) DO UPDATE SET
        version_id = CASE WHEN excluded.deleted THEN r.version_id ELSE excluded.version_id END,
        last_updated = COALESCE(excluded.last_updated, CASE WHEN excluded.deleted THEN r.last_updated END),
        content_hash = excluded.content_hash,
        deleted = excluded.deleted,
        resource = CASE WHEN excluded.deleted THEN r.resource ELSE excluded.resource END,
        fetched_at = excluded.fetched_at,
        ingested_at = now(),
        normalized = CASE WHEN excluded.deleted THEN r.normalized ELSE excluded.normalized END,
        issues = CASE WHEN excluded.deleted THEN r.issues ELSE excluded.issues END
    WHERE (r.content_hash <> excluded.content_hash OR r.deleted <> excluded.deleted
           OR r.version_id IS DISTINCT FROM excluded.version_id)
      AND CASE
        -- A deletion is a fact about the moment it was observed: only a later observation overrides it
        -- (a re-creation), and it overrides only what was observed before it.
        WHEN r.deleted OR excluded.deleted THEN excluded.fetched_at > r.fetched_at
        WHEN excluded.last_updated IS NOT NULL AND r.last_updated IS NOT NULL
             AND excluded.last_updated <> r.last_updated THEN excluded.last_updated > r.last_updated
        ELSE excluded.fetched_at > r.fetched_at
      END
    RETURNING r.resource_type, r.resource_id
    """
)

CURRENT_HASHES = text(
    """
    SELECT r.resource_type, r.resource_id, r.content_hash, r.deleted
    FROM resources r
    JOIN unnest(CAST(:facility_id AS text[]), CAST(:resource_type AS text[]), CAST(:resource_id AS text[]))
         AS k(facility_id, resource_type, resource_id)
      ON r.facility_id = k.facility_id AND r.resource_type = k.resource_type AND r.resource_id = k.resource_id
    """
)

INSERT_HISTORIES = text(
    """
    INSERT INTO resource_history (facility_id, resource_type, resource_id, version_key, version_id,
                                  last_updated, content_hash, deleted, resource, fetched_at)
    SELECT x.facility_id, x.resource_type, x.resource_id, x.version_key, x.version_id, x.last_updated,
           x.content_hash, x.deleted, CAST(x.resource AS jsonb), x.fetched_at
    FROM unnest(CAST(:facility_id AS text[]), CAST(:resource_type AS text[]), CAST(:resource_id AS text[]),
                CAST(:version_id AS text[]), CAST(:last_updated AS timestamptz[]),
                CAST(:content_hash AS text[]), CAST(:deleted AS boolean[]), CAST(:resource AS text[]),
                CAST(:fetched_at AS timestamptz[]), CAST(:version_key AS text[]))
         AS x(facility_id, resource_type, resource_id, version_id, last_updated, content_hash, deleted,
              resource, fetched_at, version_key)
    ON CONFLICT ON CONSTRAINT uq_resource_history_version DO NOTHING
    """
)

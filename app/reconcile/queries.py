"""The reconciler's reusable SQL."""

from __future__ import annotations

from sqlalchemy import text

#: One reconcile per facility at a time, across every process: a session-level advisory lock held on a
#: connection of its own for the run (released when the run ends or its process dies).
TRY_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended('ehri-reconcile:' || :fid, 0))")
#: The gap pass's tracking step, one transaction per facility at a time (``app.reconcile.gaps``).
GAPS_TRACK_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('ehri-gaps:' || :fid, 0))")
UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended('ehri-reconcile:' || :fid, 0))")

#: The facility's cohort: its stored patients, the subjects of its other stored resources, the patients
#: its HL7 v2 ADT feed named (``adt_inbox.patient_id``, resolved to FHIR ids), unless merged away by an
#: A40 or stored as deleted, and the Patient members of its configured Group (``:grp``, as last read:
#: ``app.reconcile.cohort``) unless stored as deleted.
COHORT = text(
    """
    SELECT resource_id AS patient FROM resources
     WHERE facility_id = :fid AND resource_type = 'Patient' AND NOT deleted
    UNION
    SELECT a.patient_id FROM adt_inbox a
     WHERE a.facility_id = :fid AND a.patient_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM adt_inbox m
                        WHERE m.facility_id = :fid AND m.merged_patient_id = a.patient_id)
       AND NOT EXISTS (SELECT 1 FROM resources r
                        WHERE r.facility_id = :fid AND r.resource_type = 'Patient'
                          AND r.resource_id = a.patient_id AND r.deleted)
    UNION
    SELECT g.patient_id FROM reconcile_group_members g
     WHERE g.facility_id = :fid AND g.group_id = :grp
       AND NOT EXISTS (SELECT 1 FROM resources r
                        WHERE r.facility_id = :fid AND r.resource_type = 'Patient'
                          AND r.resource_id = g.patient_id AND r.deleted)
    UNION
    SELECT substr(ref, 9) FROM (
        SELECT coalesce(resource->'subject'->>'reference', resource->'patient'->>'reference') AS ref
          FROM resources WHERE facility_id = :fid AND resource_type <> 'Patient' AND NOT deleted
    ) s WHERE ref LIKE 'Patient/%'
    ORDER BY 1
    """
)

STORED_IDS = text(
    "SELECT resource_id FROM resources WHERE facility_id = :fid AND resource_type = :rtype AND NOT deleted"
)
LIVE_IDS = text(
    "SELECT resource_id FROM resources WHERE facility_id = :fid AND resource_type = :rtype"
    " AND resource_id = ANY(CAST(:ids AS text[])) AND NOT deleted"
)
STORED_IDS_OF_PATIENT = text(
    """
    SELECT resource_id FROM resources
     WHERE facility_id = :fid AND resource_type = :rtype AND NOT deleted
       AND coalesce(resource->'subject'->>'reference', resource->'patient'->>'reference') = :ref
    """
)

#: What is stored now for some keys: told before and after a page's write, the difference is applied.
# One primary-key probe per key (LATERAL ... OFFSET 0, as app.ingest.queries does): a planner with the
# statistics of an empty table (a first backfill) hashed every resource of the facility for each page.
SNAPSHOT = text(
    """
    SELECT r.resource_type, r.resource_id, r.content_hash, r.deleted, r.version_id
    FROM unnest(CAST(:resource_type AS text[]), CAST(:resource_id AS text[])) AS k(resource_type, resource_id)
    CROSS JOIN LATERAL (
        SELECT r.resource_type, r.resource_id, r.content_hash, r.deleted, r.version_id FROM resources r
        WHERE r.facility_id = :fid AND r.resource_type = k.resource_type AND r.resource_id = k.resource_id
        OFFSET 0
    ) r
    """
)

#: A page's recovered changes, one statement (an ORM executemany binds seven parameters a row).
RECORD_RECOVERED = text(
    """
    INSERT INTO reconcile_recovered (facility_id, resource_type, resource_id, version_id, deleted, strategy,
                                     run_id)
    SELECT :fid, x.resource_type, x.resource_id, x.version_id, x.deleted, :strategy, CAST(:run_id AS bigint)
    FROM unnest(CAST(:resource_type AS text[]), CAST(:resource_id AS text[]), CAST(:version_id AS text[]),
                CAST(:deleted AS boolean[])) AS x(resource_type, resource_id, version_id, deleted)
    """
)

#: Resources a notification is on its way for (a pending inbox row): their change is not recovered.
NOTIFIED_PENDING = text(
    """
    SELECT DISTINCT focus_type, focus_id FROM inbox
     WHERE facility_id = :fid AND status = 'pending' AND focus_type = ANY(CAST(:types AS text[]))
       AND focus_id = ANY(CAST(:ids AS text[]))
    """
)

# Recent recovered rows of the facility (the recovered_at index) whose key a drained notification named
# and whose version is the one stored now.
RETRACT_RECOVERED = text(
    """
    DELETE FROM reconcile_recovered rr
     USING resources r,
           unnest(CAST(:types AS text[]), CAST(:ids AS text[]), CAST(:versions AS text[]))
               AS n(resource_type, resource_id, version_id)
     WHERE rr.facility_id = :fid
       AND rr.recovered_at > CAST(:now AS timestamptz) - make_interval(secs => :late_s)
       AND rr.resource_type = n.resource_type AND rr.resource_id = n.resource_id
       AND rr.version_id IS NOT NULL
       AND r.facility_id = rr.facility_id AND r.resource_type = rr.resource_type
       AND r.resource_id = rr.resource_id
       -- the version the notification announced; where it named none, the one its read found (now stored)
       AND CASE WHEN n.version_id IS NOT NULL THEN rr.version_id = n.version_id
                ELSE r.version_id = rr.version_id AND r.deleted = rr.deleted END
    RETURNING rr.id
    """
)

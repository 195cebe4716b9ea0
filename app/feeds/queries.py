"""Feed health's SQL: a few set-based statements over every facility at once (never one per facility).

Each statement takes the facilities and their windows as parallel arrays (``unnest``): ``:fids``,
``:latency_s`` (the detection latency), ``:error_s`` (the error window), ``:leak_s`` (the leak window),
``:settle_s`` (how late a notification may still deliver a change the reconciler stored first), and
``:now``. A *source* is ``subscription:{id}`` (the id of ``Subscription/{id}`` as notifications name
it, ``-`` for shapes that name none) or ``adt``.
"""

from __future__ import annotations

from sqlalchemy import text

from app.db.models import INBOX_DEAD, INBOX_PENDING


def _subscription_source(column: str) -> str:
    """The source label of a subscription reference (``Subscription/abc``, a full URL, or a bare id)."""
    return (
        f"'subscription:' || coalesce(substring(nullif({column}, '') from 'Subscription/([^/?#]+)'), "
        f"nullif({column}, ''), '-')"
    )


_PARAMS = """
    p AS (
        SELECT * FROM unnest(
            CAST(:fids AS text[]), CAST(:latency_s AS float8[]), CAST(:error_s AS float8[]),
            CAST(:leak_s AS float8[]), CAST(:settle_s AS float8[])
        ) AS p(facility_id, latency_s, error_s, leak_s, settle_s)
    )
"""

#: Per (facility, source): activity in the last hour and in the detection window, what the subscription
#: ledger saw (last event, notification, heartbeat, handshake, open gaps) and the subscription we keep
#: (status, heartbeat period, last check). ``:span_s`` bounds the scan of recent rows (≥ every window).
SOURCES = text(  # the interpolations are constants of this module, never input
    f"""
    WITH {_PARAMS},
    recent AS (
        SELECT i.facility_id, {_subscription_source("i.subscription")} AS source, i.received_at
          FROM inbox i
         WHERE i.received_at > CAST(:now AS timestamptz) - make_interval(secs => :span_s)
           AND i.received_at <= :now AND i.facility_id = ANY(CAST(:fids AS text[]))
        UNION ALL
        SELECT a.facility_id, 'adt', a.received_at
          FROM adt_inbox a
         WHERE a.received_at > CAST(:now AS timestamptz) - make_interval(secs => :span_s)
           AND a.received_at <= :now AND a.facility_id = ANY(CAST(:fids AS text[]))
    ),
    activity AS (
        SELECT r.facility_id, r.source, max(r.received_at) AS last_recent_at,
               count(*) FILTER (WHERE r.received_at > CAST(:now AS timestamptz) - interval '1 hour')
                   AS events_last_hour,
               count(*) FILTER (WHERE r.received_at > CAST(:now AS timestamptz)
                                                      - make_interval(secs => p.latency_s))
                   AS events_in_window,
               count(*) FILTER (WHERE r.received_at > CAST(:now AS timestamptz)
                                                      - make_interval(secs => p.error_s))
                   AS events_in_error_window,
               count(*) FILTER (WHERE r.received_at > CAST(:now AS timestamptz)
                                                      - make_interval(secs => p.leak_s))
                   AS events_in_leak_window
          FROM recent r JOIN p USING (facility_id)
         GROUP BY 1, 2
    ),
    ledger AS (
        SELECT l.facility_id, {_subscription_source("l.subscription")} AS source,
               max(l.highest_event_at) AS highest_event_at,
               max(l.last_notification_at) AS last_notification_at,
               max(l.last_heartbeat_at) AS last_heartbeat_at,
               max(l.last_handshake_at) AS last_handshake_at,
               sum((SELECT coalesce(sum((m->>1)::bigint - (m->>0)::bigint + 1), 0)
                      FROM jsonb_array_elements(l.missing) m)) AS open_gaps
          FROM subscription_ledger l
         WHERE l.facility_id = ANY(CAST(:fids AS text[]))
         GROUP BY 1, 2
    ),
    subs AS (
        SELECT s.facility_id, 'subscription:' || s.subscription_id AS source, s.status, s.heartbeat_s,
               s.last_error, s.reactivations, s.last_checked_at, s.updated_at AS subscribed_at
          FROM facility_subscriptions s
         WHERE s.facility_id = ANY(CAST(:fids AS text[]))
    ),
    adt AS (
        SELECT f.id AS facility_id, 'adt' AS source,
               (SELECT max(a.received_at) FROM adt_inbox a
                 WHERE a.facility_id = f.id AND a.received_at <= :now) AS last_adt_at
          FROM facilities f
         WHERE f.id = ANY(CAST(:fids AS text[]))
           AND (f.hl7v2 <> '{{}}'::jsonb OR EXISTS (SELECT 1 FROM adt_inbox a WHERE a.facility_id = f.id))
    ),
    keys AS (
        SELECT facility_id, source FROM activity
        UNION SELECT facility_id, source FROM ledger
        UNION SELECT facility_id, source FROM subs
        UNION SELECT facility_id, source FROM adt
    )
    SELECT k.facility_id, k.source,
           greatest(a.last_recent_at, l.last_notification_at, d.last_adt_at) AS last_event_at,
           l.last_heartbeat_at, l.last_handshake_at,
           coalesce(a.events_last_hour, 0) AS events_last_hour,
           coalesce(a.events_in_window, 0) AS events_in_window,
           coalesce(a.events_in_error_window, 0) AS events_in_error_window,
           coalesce(a.events_in_leak_window, 0) AS events_in_leak_window,
           coalesce(l.open_gaps, 0) AS open_gaps,
           s.source IS NOT NULL AS subscribed, s.status, s.heartbeat_s, s.last_error,
           coalesce(s.reactivations, 0) AS reactivations, s.last_checked_at, s.subscribed_at
      FROM keys k
      LEFT JOIN activity a USING (facility_id, source)
      LEFT JOIN ledger l USING (facility_id, source)
      LEFT JOIN subs s USING (facility_id, source)
      LEFT JOIN adt d USING (facility_id, source)
     ORDER BY 1, 2
    """  # noqa: S608
)

#: How many events each source brought in the hour ending at this time of the week, ``k`` weeks ago
#: (``k`` = 1 … ``:weeks``): what its expected rate is learned from. Each week is one index range.
HISTORY = text(
    f"""
    WITH w AS (
        SELECT k, CAST(:now AS timestamptz) - k * interval '7 days' AS upto
          FROM generate_series(1, CAST(:weeks AS int)) k
    )
    SELECT e.facility_id, e.source, w.k, count(*) AS events
      FROM w
      CROSS JOIN LATERAL (
        SELECT i.facility_id, {_subscription_source("i.subscription")} AS source
          FROM inbox i
         WHERE i.received_at > w.upto - interval '1 hour' AND i.received_at <= w.upto
           AND i.facility_id = ANY(CAST(:fids AS text[]))
        UNION ALL
        SELECT a.facility_id, 'adt'
          FROM adt_inbox a
         WHERE a.received_at > w.upto - interval '1 hour' AND a.received_at <= w.upto
           AND a.facility_id = ANY(CAST(:fids AS text[]))
      ) e
     GROUP BY 1, 2, 3
    """  # noqa: S608
)

# Statuses and event names are interpolated from constants (never user input), hence the S608 noqa.
#: Per facility: backlog (undone inbox and ADT rows) and its oldest, fetch and auth failures in the error
#: window (rows backing off now, rows dead-lettered in the window, token refusals), signature failures
#: (the receiver's 401s of the facility's senders, per minute: a minute begun in the window counts),
#: quarantined bodies,
#: dead letters, recovered changes, token state, capabilities gone, the last probe and reconcile run.
#: The leak window's recovered changes leave out those of a run a quiet check asked for (the run that
#: decided it, one started since an open check's suspicion, and those carrying on a deciding run that
#: did not complete, up to the first that does): a silent feed's changes are that check's ``feed_quiet``,
#: one incident paged once, not also a ``feed_leaking``.
#: ``:auth_reasons``: the reason slugs that are authentication failures; ``:not_failures``: slugs that are
#: our own pacing, not a failure of the EHR.
FACILITIES = text(
    f"""
    WITH {_PARAMS},
    work AS (
        SELECT i.facility_id, i.status, i.reason, i.attempts, i.received_at, i.done_at
          FROM inbox i
         WHERE i.facility_id = ANY(CAST(:fids AS text[]))
           AND i.status IN ('{INBOX_PENDING}', '{INBOX_DEAD}')
        UNION ALL
        SELECT a.facility_id, a.status, a.reason, a.attempts, a.received_at, a.done_at
          FROM adt_inbox a
         WHERE a.facility_id = ANY(CAST(:fids AS text[]))
           AND a.status IN ('{INBOX_PENDING}', '{INBOX_DEAD}')
    ),
    judged AS (
        SELECT w.facility_id, w.status, w.received_at,
               w.done_at > CAST(:now AS timestamptz) - make_interval(secs => p.error_s) AS recent,
               w.reason IS NOT NULL AND NOT w.reason = ANY(CAST(:not_failures AS text[])) AS failing,
               w.status = '{INBOX_PENDING}' AND w.attempts > 0 AS backing_off,
               coalesce(w.reason = ANY(CAST(:auth_reasons AS text[])), false) AS auth
          FROM work w JOIN p USING (facility_id)
    ),
    rows AS (
        SELECT j.facility_id,
               count(*) FILTER (WHERE j.status = '{INBOX_PENDING}') AS backlog,
               min(j.received_at) FILTER (WHERE j.status = '{INBOX_PENDING}') AS backlog_oldest_at,
               count(*) FILTER (WHERE j.status = '{INBOX_DEAD}') AS dead_letters,
               count(*) FILTER (WHERE j.status = '{INBOX_DEAD}' AND j.recent) AS dead_letters_new,
               count(*) FILTER (WHERE j.failing AND (j.backing_off OR j.recent) AND j.auth) AS auth_failures,
               count(*) FILTER (WHERE j.failing AND (j.backing_off OR j.recent) AND NOT j.auth)
                   AS fetch_failures
          FROM judged j
         GROUP BY 1
    ),
    quarantined AS (
        SELECT q.facility_id, count(*) AS total,
               count(*) FILTER (WHERE q.last_received_at > CAST(:now AS timestamptz)
                                                           - make_interval(secs => p.error_s)) AS recent
          FROM (SELECT facility_id, last_received_at FROM quarantine
                 WHERE facility_id = ANY(CAST(:fids AS text[]))
                UNION ALL
                SELECT facility_id, last_received_at FROM adt_quarantine
                 WHERE facility_id = ANY(CAST(:fids AS text[]))) q
          JOIN p USING (facility_id)
         GROUP BY 1
    ),
    quiet_runs AS (
        -- The runs quiet checks asked for: the one that decided a check (decided once it finished, so
        -- after anything it recovered; for as long as the leak window, which ends settle_s ago, can hold
        -- its recoveries) and any started since an open check's suspicion.
        SELECT c.run_id AS id
          FROM feed_checks c JOIN p USING (facility_id)
         WHERE c.run_id IS NOT NULL
           AND c.decided_at > CAST(:now AS timestamptz) - make_interval(secs => p.leak_s + p.settle_s)
        UNION
        SELECT x.id
          FROM feed_checks c
          JOIN reconcile_runs x ON x.facility_id = c.facility_id AND x.started_at >= c.suspected_at
         WHERE c.outcome IS NULL AND c.facility_id = ANY(CAST(:fids AS text[]))
        UNION
        -- A deciding run that did not complete (stopped at its time budget, or failed in one type): the
        -- runs carrying its work on, up to the first that completes, recover the same silence.
        SELECT x.id
          FROM feed_checks c JOIN p USING (facility_id)
          JOIN reconcile_runs d ON d.id = c.run_id AND d.outcome <> 'complete'
          JOIN reconcile_runs x ON x.facility_id = c.facility_id AND x.started_at > d.started_at
         WHERE c.decided_at > CAST(:now AS timestamptz) - make_interval(secs => p.leak_s + p.settle_s)
           AND NOT EXISTS (
               SELECT 1 FROM reconcile_runs y
                WHERE y.facility_id = c.facility_id AND y.outcome = 'complete'
                  AND y.started_at > d.started_at AND y.started_at < x.started_at)
    ),
    recovered AS (
        SELECT r.facility_id,
               count(*) FILTER (WHERE r.recovered_at > CAST(:now AS timestamptz) - interval '1 hour')
                   AS last_hour,
               -- a recovery counts once a late notification could no longer have delivered it (settled),
               -- and not when a quiet check's reconcile made it (that is the feed_quiet's incident)
               count(*) FILTER (WHERE r.recovered_at <= CAST(:now AS timestamptz)
                                                        - make_interval(secs => p.settle_s)
                                  AND r.recovered_at > CAST(:now AS timestamptz)
                                                       - make_interval(secs => p.leak_s + p.settle_s)
                                  AND NOT EXISTS (SELECT 1 FROM quiet_runs q WHERE q.id = r.run_id))
                   AS in_leak_window
          FROM reconcile_recovered r JOIN p USING (facility_id)
         WHERE r.recovered_at > CAST(:now AS timestamptz)
                                - make_interval(secs => greatest(p.leak_s + p.settle_s, 3600))
         GROUP BY 1
    ),
    gone AS (
        SELECT facility_id, array_agg(capability ORDER BY capability) AS capabilities
          FROM (SELECT DISTINCT ON (facility_id, capability) facility_id, capability, change
                  FROM capability_events
                 WHERE facility_id = ANY(CAST(:fids AS text[]))
                 ORDER BY facility_id, capability, detected_at DESC, id DESC) latest
         WHERE change = 'gone'
         GROUP BY 1
    )
    SELECT p.facility_id,
           coalesce(r.backlog, 0) AS backlog, r.backlog_oldest_at,
           coalesce(r.dead_letters, 0) AS dead_letters, coalesce(r.dead_letters_new, 0) AS dead_letters_new,
           coalesce(r.fetch_failures, 0) AS fetch_failures,
           coalesce(r.auth_failures, 0) + coalesce(t.rejected_recent, 0) AS auth_failures,
           coalesce(sig.refusals, 0) AS signature_failures,
           coalesce(q.total, 0) AS quarantined, coalesce(q.recent, 0) AS quarantined_recent,
           coalesce(rc.last_hour, 0) AS recovered_last_hour,
           coalesce(rc.in_leak_window, 0) AS recovered_in_leak_window,
           tr.at AS token_rejected_at, tok.at AS token_ok_at,
           coalesce(g.capabilities, CAST(ARRAY[] AS text[])) AS capabilities_gone,
           fc.ok AS probe_ok, fc.reason AS probe_reason,
           run.finished_at AS reconciled_at, run.outcome AS reconcile_outcome
      FROM p
      LEFT JOIN rows r USING (facility_id)
      LEFT JOIN quarantined q USING (facility_id)
      LEFT JOIN recovered rc USING (facility_id)
      LEFT JOIN gone g USING (facility_id)
      LEFT JOIN facility_capabilities fc USING (facility_id)
      LEFT JOIN LATERAL (
          SELECT sum(w.refusals) AS refusals FROM webhook_refusals w
           WHERE w.facility_id = p.facility_id AND w.minute <= :now
             AND w.minute > CAST(:now AS timestamptz) - make_interval(secs => p.error_s)
      ) sig ON true
      LEFT JOIN LATERAL (
          SELECT count(*) AS rejected_recent FROM token_events e
           WHERE e.facility_id = p.facility_id AND e.event = 'rejected'
             AND e.at > CAST(:now AS timestamptz) - make_interval(secs => p.error_s) AND e.at <= :now
      ) t ON true
      LEFT JOIN LATERAL (
          SELECT e.at FROM token_events e
           WHERE e.facility_id = p.facility_id AND e.event = 'rejected' AND e.at <= :now
           ORDER BY e.at DESC LIMIT 1
      ) tr ON true
      LEFT JOIN LATERAL (
          SELECT e.at FROM token_events e
           WHERE e.facility_id = p.facility_id AND e.event IN ('issued', 'renewed') AND e.at <= :now
           ORDER BY e.at DESC LIMIT 1
      ) tok ON true
      LEFT JOIN LATERAL (
          SELECT x.finished_at, x.outcome FROM reconcile_runs x
           WHERE x.facility_id = p.facility_id AND x.finished_at IS NOT NULL
           ORDER BY x.started_at DESC LIMIT 1
      ) run ON true
     ORDER BY 1
    """  # noqa: S608
)

#: The latest quiet check of each source.
LATEST_CHECKS = text(
    """
    SELECT DISTINCT ON (facility_id, source)
           id, facility_id, source, reason, suspected_at, silent_since, outcome, recovered, decided_at
      FROM feed_checks
     WHERE facility_id = ANY(CAST(:fids AS text[]))
     ORDER BY facility_id, source, suspected_at DESC, id DESC
    """
)

#: Decide the open checks a reconcile has answered: the first run of the facility that started at or
#: after the suspicion and completed, or recovered something (stopped at its budget, or failed in another
#: type). A run that recovered changes says the silence hid them (``leaking``); one that found nothing,
#: that the data genuinely stopped changing (``quiet``). A failed run that recovered nothing decides
#: nothing: the next one will.
DECIDE_CHECKS = text(
    """
    WITH answered AS (
        SELECT c.id, r.id AS run_id, r.recovered
          FROM feed_checks c
          CROSS JOIN LATERAL (
              SELECT x.id, x.recovered FROM reconcile_runs x
               WHERE x.facility_id = c.facility_id AND x.started_at >= c.suspected_at
                 AND x.finished_at IS NOT NULL
                 AND (x.outcome = 'complete' OR x.recovered > 0)
               ORDER BY x.started_at LIMIT 1
          ) r
         WHERE c.outcome IS NULL
    )
    UPDATE feed_checks c
       SET run_id = a.run_id, recovered = a.recovered, decided_at = :now,
           outcome = CASE WHEN a.recovered > 0 THEN 'leaking' ELSE 'quiet' END
      FROM answered a
     WHERE c.id = a.id AND c.outcome IS NULL
    RETURNING c.facility_id, c.source, c.outcome, c.recovered, c.run_id
    """
)

#: Open a check for a suspected source; nothing when one is open already (another evaluator's).
OPEN_CHECK = text(
    """
    INSERT INTO feed_checks (facility_id, source, reason, suspected_at, silent_since)
    VALUES (:fid, :source, :reason, :now, :silent_since)
    ON CONFLICT (facility_id, source) WHERE outcome IS NULL DO NOTHING
    RETURNING id
    """
)

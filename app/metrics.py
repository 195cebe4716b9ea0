"""Prometheus metrics. Labels carry facility ids, shapes and reason slugs only, never patient data.
Requests for unknown facilities are labelled ``-`` so a scanner cannot grow the label set."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Histogram

NOTIFICATIONS = Counter(
    "ehri_notifications_total",
    "Notification requests by facility, shape, notification type and outcome (accepted or a reason).",
    ["facility", "shape", "type", "outcome"],
)
EVENTS = Counter(
    "ehri_notification_events_total",
    "Notification events by facility and outcome (stored, duplicate, refused reason).",
    ["facility", "outcome"],
)
ACK_SECONDS = Histogram(
    "ehri_ack_seconds",
    "Time from request start to the receiver's answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
AUTH_FAILURES = Counter(
    "ehri_webhook_auth_failures_total",
    "Senders refused with 401, by facility and reason.",
    ["facility", "reason"],
)
QUARANTINED = Counter(
    "ehri_quarantined_total",
    "Authenticated bodies kept in quarantine (no recognizable notification), by facility and reason.",
    ["facility", "reason"],
)
LEDGER_GAPS = Counter(
    "ehri_subscription_gap_events_total",
    "Event numbers found missing on arrival (gaps opened in the subscription ledger), reordered events"
    " included: ehri_events_missed_total counts what stayed missing past the grace.",
    ["facility"],
)
COMMIT_BATCH = Histogram(
    "ehri_commit_batch_notifications",
    "Notifications committed per group-commit transaction of the receiver.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
COMMIT_SECONDS = Histogram(
    "ehri_commit_seconds",
    "Duration of one group-commit transaction of the receiver (lock, write, commit).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
BATCHES_ISOLATED = Counter(
    "ehri_commit_batches_isolated_total",
    "Group-commit transactions that failed on a healthy connection and were retried one request at a time.",
)
LEDGER_CACHE = Counter(
    "ehri_commit_ledger_cache_total",
    "Receiver transactions by how they met the event ledger: hit (the rows as this process last wrote"
    " them, one round trip), stale (changed meanwhile by another writer: locked and read again), miss.",
    ["result"],
)
DOORBELL_FAILURES = Counter("ehri_doorbell_failures_total", "Doorbells that could not reach Redis.")


# Labelled children are stable objects: cached, the receiver's hot path skips prometheus' lock and
# label validation. The label sets are bounded (facilities x shapes x types x outcomes).
@lru_cache(maxsize=8192)
def notifications(facility: str, shape: str, ntype: str, outcome: str) -> Counter:
    return NOTIFICATIONS.labels(facility, shape, ntype, outcome)


@lru_cache(maxsize=8192)
def events(facility: str, outcome: str) -> Counter:
    return EVENTS.labels(facility, outcome)


# -- worker side ---------------------------------------------------------------------------------------
EHR_REQUEST_SECONDS = Histogram(
    "ehri_ehr_request_seconds",
    "EHR requests by facility and HTTP status (or transport_error), with their latency.",
    ["facility", "status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DRAIN_SECONDS = Histogram(
    "ehri_drain_seconds",
    "Duration of one drain of a facility's inbox (every batch of one task).",
    ["facility"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
BATCH_SECONDS = Histogram(
    "ehri_drain_batch_seconds",
    "Duration of one claimed batch: fetch, store and the rows' outcomes, committed.",
    ["facility"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INBOX_ROWS = Counter(
    "ehri_inbox_rows_total",
    "Inbox rows whose outcome the drain committed, by facility, outcome (done, retried, dead) and reason.",
    ["facility", "outcome", "reason"],
)
STALE_WRITES = Counter(
    "ehri_stale_writes_total",
    "Versions observed older than the stored one: counted, never applied (DESIGN.md rule 3).",
    ["facility"],
)


@lru_cache(maxsize=4096)
def ehr_request(facility: str, status: str) -> Histogram:
    return EHR_REQUEST_SECONDS.labels(facility, status)


# -- MLLP listener (HL7 v2 ADT) -------------------------------------------------------------------------
from prometheus_client import Gauge  # noqa: E402 - grouped with the listener's metrics

MLLP_MESSAGES = Counter(
    "ehri_mllp_messages_total",
    "HL7 v2 messages by facility (- when unknown), event and outcome (stored, duplicate, an AR reason, "
    "database_unavailable).",
    ["facility", "event", "outcome"],
)
MLLP_ACK_SECONDS = Histogram(
    "ehri_mllp_ack_seconds",
    "Time from a complete MLLP frame to its ACK written, by ACK code.",
    ["code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
# livesum: under a worker's multiprocess registry (which imports this module too) the gauge adds no pid
# label, so every served sample keeps to ids and slugs.
MLLP_CONNECTIONS = Gauge(
    "ehri_mllp_connections_open", "MLLP connections open now.", multiprocess_mode="livesum"
)
MLLP_REFUSED_PEERS = Counter(
    "ehri_mllp_refused_connections_total",
    "Connections closed before reading: no facility allows the address.",
)


@lru_cache(maxsize=8192)
def mllp_messages(facility: str, event: str, outcome: str) -> Counter:
    return MLLP_MESSAGES.labels(facility, event, outcome)


RECONCILE_RECOVERED = Counter(
    "ehri_reconcile_recovered_total",
    "Changes the reconciler applied that no notification had delivered.",
    ["facility", "resource_type", "strategy"],
)
EVENTS_MISSED = Counter(
    "ehri_events_missed_total",
    "Event numbers still missing from a subscription after the gap grace period (a reordered event that"
    " arrived within it is not counted), by facility.",
    ["facility"],
)
RECONCILE_RUNS = Counter(
    "ehri_reconcile_runs_total",
    "Reconcile runs per facility and resource type, by outcome (complete, partial, a reason slug).",
    ["facility", "resource_type", "outcome"],
)

ALERT_TRANSITIONS = Counter(
    "ehri_alert_transitions_total",
    "Alert state changes made by this process: opened, reopened, acknowledged, resolved.",
    ["facility", "kind", "transition"],
)
ALERT_DELIVERIES = Counter(
    "ehri_alert_deliveries_total",
    "Alert sink sends by sink, action (trigger, acknowledge, resolve) and outcome (sent, retried, failed).",
    ["sink", "action", "outcome"],
)


# -- feed health (app.feeds): set on every evaluation; labels are facility ids, sources
# (subscription:{id}, adt, facility) and kind slugs only. mostrecent: under a worker's multiprocess
# registry the last evaluation wins, with no pid label.
def _feed_gauge(name: str, documentation: str, labels: list[str]) -> Gauge:
    return Gauge(name, documentation, labels, multiprocess_mode="mostrecent")


FEED_CONDITION = _feed_gauge(
    "ehri_feed_condition",
    "1 while a feed-health condition holds for (facility, source, kind), 0 once evaluated healthy.",
    ["facility", "source", "kind"],
)
FEED_LAST_EVENT_AGE = _feed_gauge(
    "ehri_feed_last_event_age_seconds",
    "Seconds since the source's last event (absent: never one).",
    ["facility", "source"],
)
FEED_LAST_HEARTBEAT_AGE = _feed_gauge(
    "ehri_feed_last_heartbeat_age_seconds",
    "Seconds since the source's last heartbeat (absent: never one).",
    ["facility", "source"],
)
FEED_EVENTS_LAST_HOUR = _feed_gauge(
    "ehri_feed_events_last_hour", "Events the source brought in the last hour.", ["facility", "source"]
)
FEED_BACKLOG = _feed_gauge("ehri_feed_backlog", "Undone inbox and ADT rows.", ["facility"])
FEED_BACKLOG_OLDEST_AGE = _feed_gauge(
    "ehri_feed_backlog_oldest_age_seconds",
    "Age of the oldest undone inbox or ADT row (0: none).",
    ["facility"],
)
FEED_FAILURES = _feed_gauge(
    "ehri_feed_failures",
    "Failures in the facility's error window, by kind (fetch, auth, signature, quarantine).",
    ["facility", "kind"],
)
FEED_DEAD_LETTERS = _feed_gauge("ehri_feed_dead_letters", "Dead letters (inbox and ADT).", ["facility"])
FEED_RECOVERED_LAST_HOUR = _feed_gauge(
    "ehri_feed_recovered_last_hour",
    "Changes the reconciler recovered in the last hour (no notification delivered them).",
    ["facility"],
)

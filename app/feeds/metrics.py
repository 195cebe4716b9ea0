"""Feed health exported as Prometheus gauges (defined in ``app.metrics``): each evaluated condition key as
1 or 0, and the health figures. Labels: facility ids, sources and kind slugs only."""

from __future__ import annotations

from datetime import datetime

from app.alerts.conditions import Condition
from app.feeds.health import FacilityHealth
from app.metrics import (
    FEED_BACKLOG,
    FEED_BACKLOG_OLDEST_AGE,
    FEED_CONDITION,
    FEED_DEAD_LETTERS,
    FEED_EVENTS_LAST_HOUR,
    FEED_FAILURES,
    FEED_LAST_EVENT_AGE,
    FEED_LAST_HEARTBEAT_AGE,
    FEED_RECOVERED_LAST_HOUR,
)


def record_feed_health(
    health: list[FacilityHealth],
    conditions: list[Condition],
    evaluated: set[tuple[str, str, str]],
    now: datetime,
) -> None:
    holding = {c.key for c in conditions}
    for key in evaluated | holding:
        FEED_CONDITION.labels(*key).set(1 if key in holding else 0)
    for facility in health:
        fid = facility.facility_id
        FEED_BACKLOG.labels(fid).set(facility.backlog)
        oldest = facility.backlog_oldest_at
        FEED_BACKLOG_OLDEST_AGE.labels(fid).set((now - oldest).total_seconds() if oldest else 0)
        FEED_FAILURES.labels(fid, "fetch").set(facility.fetch_failures)
        FEED_FAILURES.labels(fid, "auth").set(facility.auth_failures)
        FEED_FAILURES.labels(fid, "signature").set(facility.signature_failures)
        FEED_FAILURES.labels(fid, "quarantine").set(facility.quarantined_recent)
        FEED_DEAD_LETTERS.labels(fid).set(facility.dead_letters)
        FEED_RECOVERED_LAST_HOUR.labels(fid).set(facility.recovered_last_hour)
        for source in facility.sources:
            FEED_EVENTS_LAST_HOUR.labels(fid, source.source).set(source.events_last_hour)
            if source.last_event_at is not None:
                FEED_LAST_EVENT_AGE.labels(fid, source.source).set(
                    (now - source.last_event_at).total_seconds()
                )
            if source.last_heartbeat_at is not None:
                FEED_LAST_HEARTBEAT_AGE.labels(fid, source.source).set(
                    (now - source.last_heartbeat_at).total_seconds()
                )

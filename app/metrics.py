"""Prometheus metrics. Labels carry facility ids, shapes and reason slugs only, never patient data."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

NOTIFICATIONS = Counter(
    "ehri_notifications_total",
    "Notification requests by facility, notification type and outcome.",
    ["facility", "type", "outcome"],
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
DOORBELL_FAILURES = Counter("ehri_doorbell_failures_total", "Doorbells that could not reach Redis.")

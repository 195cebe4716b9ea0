"""What the feed-health detectors (``app.feeds``) hand to the alert state machine (``app.alerts``).

The contract between the two halves of the alerting path:

    app.feeds  ── computes health in Postgres, decides, per (facility, source, kind), whether a
                  condition holds now ──►  list[Condition]
    app.alerts ── observe(session, conditions, evaluated, now): opens, keeps, resolves alerts (dedup key,
                  hysteresis, a conditional update so two processes never open or send one twice) and
                  queues sink deliveries in Postgres.

``evaluated`` is the set of (facility, source, kind) keys the detectors looked at in this pass: a key
evaluated and absent from ``conditions`` is healthy (an open alert for it may resolve); a key not
evaluated is unknown and leaves its alert as it is.

No patient data here: ``details`` holds ids, counts, reason slugs and timestamps only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["critical", "error", "warning", "info"]

#: Every kind of alert: its slug, default severity and a one-line meaning (README's catalogue and
#: runbook are checked against this table).
AlertKind = Literal[
    "feed_quiet",  # nothing arrived for longer than the detection window and a reconcile found changes
    "feed_leaking",  # notifications arrive, but the reconciler recovered changes none of them delivered
    "error_rate",  # fetch, auth, signature or quarantine failures above the threshold over a window
    "backlog_old",  # the oldest undone inbox row is older than the threshold
    "dead_letters",  # dead letters appeared
    "token_failing",  # token renewal failing (revoked or wrong credentials)
    "subscription_down",  # subscription in error/off and not recovered by re-activation
    "capability_gone",  # a later probe found a capability gone that a strategy depended on
    "sink_failing",  # an alert sink keeps refusing deliveries
]

DEFAULT_SEVERITY: dict[str, Severity] = {
    "feed_quiet": "critical",
    "feed_leaking": "error",
    "error_rate": "error",
    "backlog_old": "error",
    "dead_letters": "warning",
    "token_failing": "critical",
    "subscription_down": "error",
    "capability_gone": "warning",
    "sink_failing": "warning",
}

#: The source of a facility-wide condition; otherwise ``subscription:{id}``, ``adt`` or ``sink:{name}``.
FACILITY_SOURCE = "facility"


@dataclass(frozen=True)
class Condition:
    """A condition that holds now for one (facility, source, kind)."""

    facility_id: str
    source: str
    kind: AlertKind
    summary: str  # one line for a human: ids, counts, reasons; never patient data
    severity: Severity | None = None  # None: DEFAULT_SEVERITY[kind]
    details: dict[str, int | float | str | None] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.facility_id, self.source, self.kind)

    @property
    def effective_severity(self) -> Severity:
        return self.severity or DEFAULT_SEVERITY[self.kind]

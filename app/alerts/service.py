"""The alert state machine: per (facility, source, kind) at most one live alert, opened once, paged once.

::

    (condition holds) ──► open ──(operator ack)──► acknowledged
                           │  ▲                        │
      evaluated healthy    │  │ recurrence within      │ evaluated healthy continuously
      continuously for     ▼  │ the cool-down          ▼ for the resolve delay, or an operator
      the resolve delay ─► resolved ◄──────────────────┘

- **Open** is ``INSERT … ON CONFLICT DO NOTHING`` on the partial unique index of the live states: of two
  processes observing the same condition, exactly one inserts (and queues the trigger deliveries); the
  other finds the live row and only marks it seen.
- **Hysteresis**: a key evaluated healthy starts ``healthy_since``; the alert resolves only once the key was
  evaluated healthy continuously for ``resolve_delay`` (the condition coming back clears it, recorded as a
  ``seen`` event). A feed that flaps faster than the delay pages once.
- **Cool-down**: a recurrence within ``cooldown`` of a resolve reopens the same row (same dedup key, the
  ``reopened`` count goes up) instead of opening a new alert. Sinks whose resolve is still unsent have it
  cancelled and get nothing; the others get a trigger under the same dedup key.
- Every transition is one conditional statement; only the process whose statement changed the row writes
  the event and queues deliveries, in the same transaction: a state change and its sends commit together.
  Acknowledge and resolve deliveries go only to the sinks that got (or will get) the trigger.

Services flush; the caller owns the transaction. ``now`` is passed in (tests drive the clock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import Row, and_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.alerts.conditions import Condition, Severity
from app.db.models import ALERT_LIVE_STATES, LIVE_PREDICATE, Alert, AlertDelivery, AlertEvent, DeliveryAction
from app.metrics import ALERT_TRANSITIONS
from app.settings import Settings, get_settings

log = structlog.get_logger("alerts")

Key = tuple[str, str, str]
AUTO = "auto"  # the actor of transitions the state machine makes itself

#: Which sinks an alert goes to: (facility id, source, kind, severity) → sink names.
Router = Callable[[str, str, str, Severity], list[str]]


@dataclass(frozen=True)
class AlertPolicy:
    resolve_delay: timedelta = timedelta(minutes=5)
    cooldown: timedelta = timedelta(minutes=30)

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertPolicy:
        return cls(resolve_delay=settings.alert_resolve_delay, cooldown=settings.alert_cooldown)


@dataclass
class ObserveResult:
    """Alert ids per transition made by this call (another process's transitions are not listed)."""

    opened: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)  # held: the condition still (or again) holds


def observe(
    session: Session,
    conditions: Iterable[Condition],
    evaluated: Collection[Key],
    now: datetime,
    *,
    policy: AlertPolicy | None = None,
    router: Router | None = None,
) -> ObserveResult:
    """Apply one evaluation pass: open or keep an alert for every condition, start or complete the resolve
    of every live alert whose key was ``evaluated`` and holds no condition; keys not evaluated are left as
    they are. Deliveries are queued for every open, reopen and resolve this call makes.

    A held condition refreshes its alert's summary and details; the severity and the sinks stay those
    of the open (nothing is paged again).

    ``router`` defaults to the configured sinks (``app.alerts.sinks.SinkDirectory``); raises
    ConfigurationError when the global sinks file cannot be read."""
    policy = policy or AlertPolicy.from_settings(get_settings())
    holding: dict[Key, Condition] = {c.key: c for c in conditions}
    if router is None:
        from app.alerts.sinks import SinkDirectory

        router = SinkDirectory.load(get_settings()).router(session, {k[0] for k in holding})
    observation = _Pass(session, now, policy, router)
    for key in sorted(holding):  # one order in every process: row locks are taken in it
        observation.hold(holding[key])
    healthy = set(evaluated) - holding.keys()
    if healthy:
        observation.heal(healthy)
    session.flush()
    return observation.result


def _key_is(key: Key) -> Any:
    return and_(Alert.facility_id == key[0], Alert.source == key[1], Alert.kind == key[2])


@dataclass
class _Pass:
    """One ``observe`` call: its session, clock, policy and routing, and what it changed."""

    session: Session
    now: datetime
    policy: AlertPolicy
    router: Router
    result: ObserveResult = field(default_factory=ObserveResult)

    def hold(self, c: Condition) -> None:
        # A row inserted or reopened by another process between our statements is found by the next
        # attempt: each statement reads what is committed when it runs (READ COMMITTED).
        for _ in range(3):
            if self._mark_seen(c) or self._reopen(c) or self._open(c):
                return
        raise AssertionError(f"alert {c.key} neither live nor insertable")  # pragma: no cover - a bug

    def _mark_seen(self, c: Condition) -> bool:
        live = (
            select(Alert.id, Alert.healthy_since)
            .where(_key_is(c.key), Alert.state.in_(ALERT_LIVE_STATES))
            .with_for_update()
            .cte("live")
        )
        row = self.session.execute(
            update(Alert)
            .where(Alert.id == live.c.id)
            .values(
                last_seen_at=self.now,
                healthy_since=None,
                summary=c.summary,
                details=c.details,
                updated_at=self.now,
            )
            .returning(Alert.id, live.c.healthy_since)
        ).first()
        if row is None:
            return False
        alert_id, was_healthy_since = row
        if was_healthy_since is not None:  # back before the resolve delay ran out: no resolve, no page
            details = {"healthy_since": was_healthy_since.isoformat()}
            _event(self.session, alert_id, "seen", actor=AUTO, now=self.now, details=details)
        self.result.seen.append(alert_id)
        return True

    def _reopen(self, c: Condition) -> bool:
        recent = (
            select(Alert.id)
            .where(
                _key_is(c.key),
                Alert.state == "resolved",
                Alert.resolved_at >= self.now - self.policy.cooldown,
            )
            .order_by(Alert.resolved_at.desc())
            .limit(1)
            .scalar_subquery()
        )
        try:
            with self.session.begin_nested():  # another process's fresh open of the key fails ours
                changed = self.session.execute(
                    update(Alert)
                    .where(Alert.id == recent, Alert.state == "resolved")
                    .values(
                        state="open",
                        severity=c.effective_severity,
                        summary=c.summary,
                        details=c.details,
                        last_seen_at=self.now,
                        healthy_since=None,
                        acknowledged_at=None,
                        acknowledged_by=None,
                        resolved_at=None,
                        resolved_by=None,
                        reopened=Alert.reopened + 1,
                        updated_at=self.now,
                    )
                    .returning(*_CHANGED)
                ).first()
        except IntegrityError:
            return False
        if changed is None:
            return False
        # A resolve not sent yet is withdrawn: for that sink the alert never stopped.
        withdrawn = set(
            self.session.scalars(
                update(AlertDelivery)
                .where(
                    AlertDelivery.alert_id == changed.id,
                    AlertDelivery.action == "resolve",
                    AlertDelivery.state == "pending",
                )
                .values(state="cancelled")
                .returning(AlertDelivery.sink)
            )
        )
        sinks = [s for s in self.router(*c.key, c.effective_severity) if s not in withdrawn]
        _transition(
            self.session,
            changed,
            "reopened",
            actor=AUTO,
            now=self.now,
            sinks=sinks,
            action="trigger",
            withdrawn_resolves=len(withdrawn),
        )
        self.result.reopened.append(changed.id)
        return True

    def _open(self, c: Condition) -> bool:
        changed = self.session.execute(
            insert(Alert)
            .values(
                facility_id=c.facility_id,
                source=c.source,
                kind=c.kind,
                severity=c.effective_severity,
                state="open",
                summary=c.summary,
                details=c.details,
                opened_at=self.now,
                last_seen_at=self.now,
                updated_at=self.now,
            )
            .on_conflict_do_nothing(
                index_elements=[Alert.facility_id, Alert.source, Alert.kind],
                # Literal, not bound: a prepared statement's parameters cannot infer the partial index.
                index_where=text(LIVE_PREDICATE),
            )
            .returning(*_CHANGED)
        ).first()
        if changed is None:
            return False
        sinks = self.router(*c.key, c.effective_severity)
        _transition(
            self.session,
            changed,
            "opened",
            actor=AUTO,
            now=self.now,
            sinks=sinks,
            action="trigger",
            severity=c.effective_severity,
        )
        self.result.opened.append(changed.id)
        return True

    def heal(self, healthy: set[Key]) -> None:
        """Start (``healthy_since``) or complete the resolve of the live alerts of ``healthy`` keys."""
        # Live alerts are few; the evaluated keys may be many: intersect in Python, update only live rows.
        live = self.session.execute(
            select(Alert.id, Alert.facility_id, Alert.source, Alert.kind).where(
                Alert.state.in_(ALERT_LIVE_STATES)
            )
        ).all()
        ids = sorted(row.id for row in live if (row.facility_id, row.source, row.kind) in healthy)
        if not ids:
            return
        self.session.execute(
            update(Alert)
            .where(Alert.id.in_(ids), Alert.state.in_(ALERT_LIVE_STATES), Alert.healthy_since.is_(None))
            .values(healthy_since=self.now, updated_at=self.now)
        )
        resolved = self.session.execute(
            update(Alert)
            .where(
                Alert.id.in_(ids),
                Alert.state.in_(ALERT_LIVE_STATES),
                Alert.healthy_since <= self.now - self.policy.resolve_delay,
            )
            .values(
                state="resolved",
                resolved_at=self.now,
                resolved_by=AUTO,
                healthy_since=None,
                updated_at=self.now,
            )
            .returning(*_CHANGED)
        ).all()
        for changed in sorted(resolved, key=lambda r: r.id):
            sinks = triggered_sinks(self.session, changed.id)
            _transition(
                self.session, changed, "resolved", actor=AUTO, now=self.now, sinks=sinks, action="resolve"
            )
            self.result.resolved.append(changed.id)


# -- operators ----------------------------------------------------------------------------------------------

Outcome = Literal["done", "unchanged", "not_found"]


def acknowledge(session: Session, alert_id: int, actor: str, now: datetime) -> Outcome:
    """Acknowledge an open alert: ``unchanged`` when it is already acknowledged or resolved."""
    values = {"state": "acknowledged", "acknowledged_at": now, "acknowledged_by": actor}
    return _by_operator(
        session,
        alert_id,
        actor=actor,
        now=now,
        from_states=("open",),
        values=values,
        event="acknowledged",
        action="acknowledge",
    )


def resolve(session: Session, alert_id: int, actor: str, now: datetime) -> Outcome:
    """Resolve a live alert by hand. Should its condition still hold at the next evaluation, the alert
    reopens (within the cool-down) and pages again: resolving is a claim that the cause is gone."""
    values = {"state": "resolved", "resolved_at": now, "resolved_by": actor, "healthy_since": None}
    return _by_operator(
        session,
        alert_id,
        actor=actor,
        now=now,
        from_states=ALERT_LIVE_STATES,
        values=values,
        event="resolved",
        action="resolve",
    )


def _by_operator(
    session: Session,
    alert_id: int,
    *,
    actor: str,
    now: datetime,
    from_states: tuple[str, ...],
    values: dict[str, Any],
    event: str,
    action: DeliveryAction,
) -> Outcome:
    changed = session.execute(
        update(Alert)
        .where(Alert.id == alert_id, Alert.state.in_(from_states))
        .values(**values, updated_at=now)
        .returning(*_CHANGED)
    ).first()
    if changed is None:
        return "not_found" if session.get(Alert, alert_id) is None else "unchanged"
    sinks = triggered_sinks(session, alert_id)
    _transition(session, changed, event, actor=actor, now=now, sinks=sinks, action=action)
    session.flush()
    return "done"


def list_alerts(
    session: Session, *, live_only: bool = False, facility: str | None = None, limit: int = 200
) -> list[Alert]:
    """Newest first."""
    stmt = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if live_only:
        stmt = stmt.where(Alert.state.in_(ALERT_LIVE_STATES))
    if facility is not None:
        stmt = stmt.where(Alert.facility_id == facility)
    return list(session.scalars(stmt))


def alert_deliveries(session: Session, alert_id: int) -> list[AlertDelivery]:
    """In queue order."""
    return list(
        session.scalars(
            select(AlertDelivery).where(AlertDelivery.alert_id == alert_id).order_by(AlertDelivery.id)
        )
    )


def alert_history(session: Session, alert_id: int) -> list[AlertEvent]:
    return list(
        session.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id))
    )


# -- shared steps -------------------------------------------------------------------------------------------


def triggered_sinks(session: Session, alert_id: int) -> list[str]:
    """The sinks that got, or are about to get, a trigger of this alert (a failed one never reached)."""
    return sorted(
        session.scalars(
            select(AlertDelivery.sink)
            .where(
                AlertDelivery.alert_id == alert_id,
                AlertDelivery.action == "trigger",
                AlertDelivery.state.in_(("pending", "sent")),
            )
            .distinct()
        )
    )


def _queue(
    session: Session, alert_id: int, sinks: Iterable[str], action: DeliveryAction, now: datetime
) -> None:
    rows = [
        {"alert_id": alert_id, "sink": sink, "action": action, "next_attempt_at": now, "created_at": now}
        for sink in sinks
    ]
    if rows:
        session.execute(insert(AlertDelivery), rows)


def _event(
    session: Session, alert_id: int, event: str, *, actor: str, now: datetime, details: dict[str, Any]
) -> None:
    session.execute(
        insert(AlertEvent).values(alert_id=alert_id, event=event, actor=actor, at=now, details=details)
    )


#: What every transition statement returns: the row's id and key (for the event, the log line, the metric).
_CHANGED = (Alert.id, Alert.facility_id, Alert.source, Alert.kind)


def _transition(
    session: Session,
    changed: Row[int, str, str, str],
    event: str,
    *,
    actor: str,
    now: datetime,
    sinks: Iterable[str],
    action: DeliveryAction,
    **details: Any,
) -> None:
    """Record a transition this process made: its history row, its deliveries, a log line, the counter."""
    sinks = list(sinks)
    _event(session, changed.id, event, actor=actor, now=now, details=details)
    _queue(session, changed.id, sinks, action, now)
    ALERT_TRANSITIONS.labels(changed.facility_id, changed.kind, event).inc()
    log.log(
        logging.WARNING if event in {"opened", "reopened"} else logging.INFO,
        f"alerts.alert.{event}",
        alert_id=changed.id,
        facility_id=changed.facility_id,
        source=changed.source,
        kind=changed.kind,
        actor=actor,
        sinks=len(sinks),
        **details,
    )

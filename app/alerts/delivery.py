"""The outbox sender: sends the alert deliveries that are due, in order per (alert, sink), with a bound.

- A delivery is claimed ``FOR UPDATE SKIP LOCKED`` (another sender takes the next one) once its
  ``next_attempt_at`` is due, and only when no earlier delivery of the same alert to the same sink is still
  pending: a resolve never overtakes its trigger, whatever the retries did.
- One delivery per transaction: claim, one send (bounded by the sink's timeout), record, commit. A sender
  killed mid-send leaves the row pending (sent again: PagerDuty deduplicates on the dedup key, a webhook
  receiver on ``webhook-id``).
- A refused send (``SinkUnavailable``, an unresolvable secret) is backed off exponentially in Postgres;
  after ``max_attempts`` (or at once for ``SinkRefused``) the delivery is ``failed`` and a ``sink_failing``
  condition (source ``sink:{name}``) is returned for the next ``observe`` pass. A sink that failed once in
  a pass is not tried again in that pass.
- Meant for a task and queue of its own (not the drain's): a failing sink never blocks or slows ingestion.
  A refused send's error is logged by class and reason only: a Slack webhook URL is a credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from app.alerts.conditions import Condition
from app.alerts.sinks import SINK_SOURCE_PREFIX, AlertMessage, SinkDirectory, facility_alerts
from app.db.models import ALERT_LIVE_STATES, Alert, AlertDelivery, Facility
from app.errors import IngestError, InternalError, SinkRefused
from app.metrics import ALERT_DELIVERIES
from app.settings import Settings, get_settings

log = structlog.get_logger("alerts")

Key = tuple[str, str, str]


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 10
    retry_base: timedelta = timedelta(seconds=30)
    retry_cap: timedelta = timedelta(minutes=15)
    batch: int = 100  # most deliveries one call sends

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            max_attempts=settings.alert_delivery_max_attempts,
            retry_base=settings.alert_retry_base,
            retry_cap=settings.alert_retry_cap,
        )

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failed send: base * 2^(attempts-1), at most the cap."""
        wait: timedelta = self.retry_base * (2 ** max(attempts - 1, 0))
        return min(self.retry_cap, wait)


@dataclass
class DeliveryReport:
    """What one ``deliver_due`` call did, and what the next ``observe`` pass should know: a
    ``sink_failing`` condition per (facility, sink) whose delivery failed for good, and as evaluated every
    (facility, sink) key that this call sent to or failed (a sink that delivers again is healthy)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    conditions: list[Condition] = field(default_factory=list)
    evaluated: set[Key] = field(default_factory=set)
    delivered_to: set[str] = field(default_factory=set)  # sinks that took at least one delivery


def _sink_key(facility_id: str, sink: str) -> Key:
    return (facility_id, f"{SINK_SOURCE_PREFIX}{sink}", "sink_failing")


def _claim(session: Session, now: datetime, skip_sinks: set[str]) -> AlertDelivery | None:
    earlier = aliased(AlertDelivery)
    blocked = (
        select(earlier.id)
        .where(
            earlier.alert_id == AlertDelivery.alert_id,
            earlier.sink == AlertDelivery.sink,
            earlier.state == "pending",
            earlier.id < AlertDelivery.id,
        )
        .exists()
    )
    stmt = (
        select(AlertDelivery)
        .where(AlertDelivery.state == "pending", AlertDelivery.next_attempt_at <= now, ~blocked)
        .order_by(AlertDelivery.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=AlertDelivery)
    )
    if skip_sinks:
        stmt = stmt.where(AlertDelivery.sink.not_in(skip_sinks))
    return session.scalars(stmt).first()


def deliver_due(
    session_factory: sessionmaker[Session],
    now: datetime,
    http_client: httpx.Client,
    *,
    policy: DeliveryPolicy | None = None,
    sinks: SinkDirectory | None = None,
) -> DeliveryReport:
    """Send every due delivery (up to ``policy.batch``), each in its own transaction. Safe to run in
    several processes at once. Raises ConfigurationError when the global sinks file is unreadable."""
    settings = get_settings()
    policy = policy or DeliveryPolicy.from_settings(settings)
    sinks = sinks or SinkDirectory.load(settings)
    report = DeliveryReport()
    failing: set[str] = set()  # sinks that refused in this pass: not tried again in it
    for _ in range(policy.batch):
        with session_factory.begin() as session:
            delivery = _claim(session, now, failing)
            if delivery is None:
                break
            _deliver(
                session,
                delivery,
                now,
                http=http_client,
                policy=policy,
                sinks=sinks,
                report=report,
                failing=failing,
            )
    delivering = report.delivered_to - failing
    with session_factory() as session:
        if delivering:
            report.evaluated |= _live_sink_alerts(session, delivering)
        report.evaluated |= _recovering_sink_alerts(session, failing)
    return report


def _recovering_sink_alerts(session: Session, failing: set[str]) -> set[Key]:
    """The keys of live ``sink_failing`` alerts whose sink delivered since (``healthy_since``) and refuses
    nothing now (not in this pass, no delivery to it backing off): still healthy, evaluated so in every
    pass, so that the alert resolves once the resolve delay ran out, not only at the sink's next delivery
    after that (on a calm night, none)."""
    sink_name = func.substr(Alert.source, len(SINK_SOURCE_PREFIX) + 1)
    refusing = (
        select(AlertDelivery.id)
        .where(AlertDelivery.sink == sink_name, AlertDelivery.state == "pending", AlertDelivery.attempts > 0)
        .exists()
    )
    rows = session.execute(
        select(Alert.facility_id, Alert.source, Alert.kind).where(
            Alert.kind == "sink_failing",
            Alert.state.in_(ALERT_LIVE_STATES),
            Alert.healthy_since.is_not(None),
            Alert.source.not_in([f"{SINK_SOURCE_PREFIX}{s}" for s in failing]),
            ~refusing,
        )
    )
    return {(r.facility_id, r.source, r.kind) for r in rows}


def _live_sink_alerts(session: Session, sinks: set[str]) -> set[Key]:
    """The keys of live ``sink_failing`` alerts about ``sinks``, of every facility: a sink that delivers
    again is healthy for all of them, whichever facility's alert it delivered."""
    rows = session.execute(
        select(Alert.facility_id, Alert.source, Alert.kind).where(
            Alert.kind == "sink_failing",
            Alert.source.in_([f"{SINK_SOURCE_PREFIX}{s}" for s in sinks]),
            Alert.state.in_(ALERT_LIVE_STATES),
        )
    )
    return {(r.facility_id, r.source, r.kind) for r in rows}


def _deliver(
    session: Session,
    delivery: AlertDelivery,
    now: datetime,
    *,
    http: httpx.Client,
    policy: DeliveryPolicy,
    sinks: SinkDirectory,
    report: DeliveryReport,
    failing: set[str],
) -> None:
    alert = session.get_one(Alert, delivery.alert_id)
    raw = session.scalar(select(Facility.alerts).where(Facility.id == alert.facility_id))
    sink = sinks.sink(facility_alerts(raw), delivery.sink)
    attempts = delivery.attempts + 1
    key = _sink_key(alert.facility_id, delivery.sink)
    bound = {
        "delivery_id": delivery.id,
        "alert_id": alert.id,
        "sink": delivery.sink,
        "action": delivery.action,
    }
    try:
        if sink is None:
            raise SinkRefused("sink_unconfigured", delivery.sink)
        message = AlertMessage.of(alert, delivery.action, delivery.id)  # type: ignore[arg-type]
        # Signed and stamped with the wall clock of the send: ``now`` (due times) may be a while ago.
        sink.send(http, message, datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - one poison delivery must not stop every later one
        failing.add(delivery.sink)
        if not isinstance(exc, IngestError):
            # The class only: a message could carry the sink's URL, which for Slack is the credential.
            log.error("alerts.delivery.error", error=type(exc).__name__, **bound)
            exc = InternalError(type(exc).__name__)
        if exc.permanent or attempts >= policy.max_attempts:
            _record(session, delivery.id, state="failed", attempts=attempts, last_error=exc.reason)
            report.failed += 1
            report.evaluated.add(key)
            report.conditions.append(
                Condition(
                    facility_id=alert.facility_id,
                    source=key[1],
                    kind="sink_failing",
                    summary=f"alert sink {delivery.sink} refused delivery {delivery.id} (alert {alert.id},"
                    f" {delivery.action}) {attempts} times: {exc.reason}",
                    details={
                        "sink": delivery.sink,
                        "delivery_id": delivery.id,
                        "alert_id": alert.id,
                        "attempts": attempts,
                        "reason": exc.reason,
                    },
                )
            )
            ALERT_DELIVERIES.labels(delivery.sink, delivery.action, "failed").inc()
            log.error("alerts.delivery.failed", reason=exc.reason, attempts=attempts, **bound)
            return
        _record(
            session,
            delivery.id,
            attempts=attempts,
            last_error=exc.reason,
            next_attempt_at=now + policy.backoff(attempts),
        )
        report.retried += 1
        ALERT_DELIVERIES.labels(delivery.sink, delivery.action, "retried").inc()
        log.warning("alerts.delivery.retrying", reason=exc.reason, attempts=attempts, **bound)
        return
    _record(session, delivery.id, state="sent", attempts=attempts, sent_at=now)
    report.sent += 1
    report.evaluated.add(key)
    report.delivered_to.add(delivery.sink)
    ALERT_DELIVERIES.labels(delivery.sink, delivery.action, "sent").inc()
    log.info("alerts.delivery.sent", attempts=attempts, **bound)


def _record(session: Session, delivery_id: int, **values: object) -> None:
    session.execute(update(AlertDelivery).where(AlertDelivery.id == delivery_id).values(**values))

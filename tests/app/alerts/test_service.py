"""The alert state machine on real Postgres: open once, page once, resolve after the delay, reopen in the
cool-down under the same dedup key, operators' ack and resolve."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

from app.alerts.service import AlertPolicy, ObserveResult, acknowledge, observe, resolve
from app.db.models import AlertDelivery
from tests.app.alerts.conftest import T0, alerts_of, condition, deliveries_of, events_of, route_to
from tests.conftest import make_facility

POLICY = AlertPolicy(resolve_delay=timedelta(minutes=5), cooldown=timedelta(minutes=30))
ROUTER: Any = route_to("pd", "slack")
KEY = ("fac-1", "facility", "feed_quiet")


def _pass(db: Session, minutes: float, *, holds: bool, key: tuple[str, str, str] = KEY) -> ObserveResult:
    conditions = [condition(key[0], key[2], key[1])] if holds else []  # type: ignore[arg-type]
    return observe(db, conditions, {key}, T0 + timedelta(minutes=minutes), policy=POLICY, router=ROUTER)


def test_a_condition_opens_one_alert_and_queues_one_trigger_per_routed_sink(db: Session) -> None:
    make_facility(db)

    result = _pass(db, 0, holds=True)

    [alert] = alerts_of(db, "fac-1")
    assert result.opened == [alert.id]
    assert (alert.state, alert.severity, alert.kind) == ("open", "critical", "feed_quiet")
    assert alert.dedup_key == f"ehri:fac-1:facility:feed_quiet:{alert.id}"
    assert deliveries_of(db, alert.id) == [("pd", "trigger", "pending"), ("slack", "trigger", "pending")]
    assert events_of(db, alert.id) == ["opened"]


def test_a_condition_held_over_many_passes_pages_once(db: Session) -> None:
    make_facility(db)
    for minute in range(10):
        _pass(db, minute, holds=True)

    [alert] = alerts_of(db, "fac-1")
    assert alert.last_seen_at == T0 + timedelta(minutes=9)
    assert [d for d in deliveries_of(db, alert.id) if d[1] == "trigger"] == [
        ("pd", "trigger", "pending"),
        ("slack", "trigger", "pending"),
    ]


def test_a_flapping_feed_pages_once_and_never_resolves_while_it_flaps(db: Session) -> None:
    make_facility(db)
    # Healthy for 4 minutes at a time, never the 5 of the resolve delay.
    for start in range(0, 60, 5):
        _pass(db, start, holds=True)
        _pass(db, start + 1, holds=False)
        _pass(db, start + 4.9, holds=False)

    [alert] = alerts_of(db, "fac-1")
    assert alert.state == "open"
    assert deliveries_of(db, alert.id) == [("pd", "trigger", "pending"), ("slack", "trigger", "pending")]
    assert events_of(db, alert.id) == ["opened"] + ["seen"] * 11


def test_an_alert_resolves_once_healthy_continuously_for_the_resolve_delay(db: Session) -> None:
    make_facility(db)
    _pass(db, 0, holds=True)
    _pass(db, 1, holds=False)  # healthy since minute 1

    assert _pass(db, 5.99, holds=False).resolved == []
    result = _pass(db, 6, holds=False)

    [alert] = alerts_of(db, "fac-1")
    assert result.resolved == [alert.id]
    assert (alert.state, alert.resolved_at, alert.resolved_by) == (
        "resolved",
        T0 + timedelta(minutes=6),
        "auto",
    )
    assert deliveries_of(db, alert.id)[2:] == [("pd", "resolve", "pending"), ("slack", "resolve", "pending")]
    assert events_of(db, alert.id) == ["opened", "resolved"]


def test_a_key_not_evaluated_leaves_its_alert_as_it_is(db: Session) -> None:
    make_facility(db)
    _pass(db, 0, holds=True)
    _pass(db, 1, holds=False)

    observe(db, [], set(), T0 + timedelta(hours=2), policy=POLICY, router=ROUTER)  # nothing evaluated

    [alert] = alerts_of(db, "fac-1")
    assert alert.state == "open"


def test_a_recurrence_within_the_cool_down_reopens_the_same_alert_and_dedup_key(db: Session) -> None:
    make_facility(db)
    _pass(db, 0, holds=True)
    _pass(db, 1, holds=False)
    _pass(db, 6, holds=False)  # resolved
    db.execute(update(AlertDelivery).values(state="sent"))  # the trigger and resolve went out

    result = _pass(db, 20, holds=True)

    [alert] = alerts_of(db, "fac-1")
    assert result.reopened == [alert.id]
    assert (alert.state, alert.reopened, alert.resolved_at) == ("open", 1, None)
    assert alert.dedup_key.endswith(f":{alert.id}")
    assert [d[1] for d in deliveries_of(db, alert.id)] == ["trigger"] * 2 + ["resolve"] * 2 + ["trigger"] * 2
    assert events_of(db, alert.id) == ["opened", "resolved", "reopened"]


def test_a_recurrence_before_the_resolve_was_sent_withdraws_it_and_pages_nobody(db: Session) -> None:
    make_facility(db)
    _pass(db, 0, holds=True)
    _pass(db, 1, holds=False)
    _pass(db, 6, holds=False)
    db.execute(
        update(AlertDelivery).where(AlertDelivery.action == "trigger").values(state="sent")
    )  # resolves still pending

    _pass(db, 7, holds=True)

    [alert] = alerts_of(db, "fac-1")
    assert deliveries_of(db, alert.id) == [
        ("pd", "trigger", "sent"),
        ("slack", "trigger", "sent"),
        ("pd", "resolve", "cancelled"),
        ("slack", "resolve", "cancelled"),
    ]


def test_a_recurrence_after_the_cool_down_opens_a_new_alert(db: Session) -> None:
    make_facility(db)
    _pass(db, 0, holds=True)
    _pass(db, 1, holds=False)
    _pass(db, 6, holds=False)

    _pass(db, 6 + 31, holds=True)

    first, second = alerts_of(db, "fac-1")
    assert (first.state, second.state) == ("resolved", "open")
    assert first.dedup_key != second.dedup_key


def test_acknowledge_and_resolve_go_only_to_sinks_that_got_the_trigger(db: Session) -> None:
    make_facility(db)
    _pass(db, 0, holds=True)
    [alert] = alerts_of(db, "fac-1")
    db.execute(
        update(AlertDelivery)
        .where(AlertDelivery.sink == "slack")
        .values(state="failed", last_error="sink_rejected")
    )

    assert acknowledge(db, alert.id, "alice", T0 + timedelta(minutes=1)) == "done"
    assert acknowledge(db, alert.id, "bob", T0 + timedelta(minutes=2)) == "unchanged"
    assert resolve(db, alert.id, "alice", T0 + timedelta(minutes=3)) == "done"

    db.refresh(alert)
    assert (alert.state, alert.acknowledged_by, alert.resolved_by) == ("resolved", "alice", "alice")
    assert deliveries_of(db, alert.id)[2:] == [("pd", "acknowledge", "pending"), ("pd", "resolve", "pending")]
    assert events_of(db, alert.id) == ["opened", "acknowledged", "resolved"]
    assert resolve(db, alert.id, "alice", T0) == "unchanged"
    assert acknowledge(db, 10**12, "alice", T0) == "not_found"


def test_an_acknowledged_alert_still_resolves_by_itself(db: Session) -> None:
    make_facility(db)
    _pass(db, 0, holds=True)
    [alert] = alerts_of(db, "fac-1")
    acknowledge(db, alert.id, "alice", T0)

    _pass(db, 1, holds=True)  # still held: stays acknowledged, no new trigger
    _pass(db, 2, holds=False)
    _pass(db, 7, holds=False)

    db.refresh(alert)
    assert alert.state == "resolved"
    expected = ["trigger", "trigger", "acknowledge", "acknowledge", "resolve", "resolve"]
    assert [d[1] for d in deliveries_of(db, alert.id)] == expected


def _wait_for_lock_waiter(engine: Engine, application_name: str, deadline_s: float = 10.0) -> None:
    with engine.connect() as conn:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            waiting = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = :n AND wait_event_type = 'Lock'"
                ),
                {"n": application_name},
            )
            if waiting:
                return
            conn.rollback()
            time.sleep(0.02)  # polling a condition, with a deadline
    raise AssertionError("the second session never waited on the first one's open")


def _race(engine: Engine, facility: str, at: datetime) -> dict[str, ObserveResult]:
    """Two sessions observe the same condition at ``at``: the second starts while the first has changed
    the row and not committed (it waits on the first's lock), then the first commits."""
    key = (facility, "facility", "feed_quiet")
    first = Session(engine)
    results: dict[str, ObserveResult] = {}
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with Session(engine) as session:
                session.execute(text("SET application_name = 'alerts-second'"))
                results["second"] = observe(
                    session, [condition(facility)], {key}, at, policy=POLICY, router=ROUTER
                )
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - a thread's failure, reported by the main thread
            errors.append(exc)

    try:
        results["first"] = observe(first, [condition(facility)], {key}, at, policy=POLICY, router=ROUTER)
        thread = threading.Thread(target=second)
        thread.start()
        _wait_for_lock_waiter(engine, "alerts-second")
        first.commit()
        thread.join(timeout=30)
    finally:
        first.close()
    assert not errors, errors
    return results


def test_two_sessions_observing_the_same_condition_at_once_open_it_once(
    engine: Engine, committed_facility: str
) -> None:
    results = _race(engine, committed_facility, T0)

    with Session(engine) as check:
        [alert] = alerts_of(check, committed_facility)
        assert results["first"].opened == [alert.id]
        assert (results["second"].opened, results["second"].seen) == ([], [alert.id])
        assert deliveries_of(check, alert.id) == [
            ("pd", "trigger", "pending"),
            ("slack", "trigger", "pending"),
        ]


def test_two_sessions_seeing_a_recurrence_at_once_reopen_it_once(
    engine: Engine, committed_facility: str
) -> None:
    key = (committed_facility, "facility", "feed_quiet")
    with Session(engine) as session:
        observe(session, [condition(committed_facility)], {key}, T0, policy=POLICY, router=ROUTER)
        observe(session, [], {key}, T0 + timedelta(minutes=1), policy=POLICY, router=ROUTER)
        observe(session, [], {key}, T0 + timedelta(minutes=6), policy=POLICY, router=ROUTER)  # resolved
        session.execute(update(AlertDelivery).values(state="sent"))
        session.commit()

    results = _race(engine, committed_facility, T0 + timedelta(minutes=10))

    with Session(engine) as check:
        [alert] = alerts_of(check, committed_facility)
        assert results["first"].reopened == [alert.id]
        assert (results["second"].reopened, results["second"].opened, results["second"].seen) == (
            [],
            [],
            [alert.id],
        )
        assert [d[1] for d in deliveries_of(check, alert.id)].count(
            "trigger"
        ) == 4  # 2 sinks, opened + reopened


def test_many_keys_in_one_pass_each_open_once(db: Session) -> None:
    make_facility(db)
    conditions = [condition("fac-1", source=f"subscription:{i}") for i in range(12)]  # past psycopg's prepare

    observe(db, conditions, set(), T0, policy=POLICY, router=ROUTER)
    observe(db, conditions, set(), T0 + timedelta(minutes=1), policy=POLICY, router=ROUTER)

    assert len(alerts_of(db, "fac-1")) == 12

"""Feed health computed in Postgres from recorded rows, and the quiet-check flow of ``evaluate``."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.db.models import Facility, FeedCheck, ReconcileRun
from app.feeds.health import FacilityHealth, SourceHealth
from app.feeds.service import QUIET_TRIGGER, evaluate, feed_health
from app.reconcile.requests import REQUESTED
from tests.conftest import make_facility

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)  # a Wednesday afternoon
_keys = itertools.count()


def _facility(db: Session, fid: str = "fac-h", *, created: datetime | None = None, **values: Any) -> Facility:
    facility = make_facility(db, fid)
    facility.created_at = created or NOW - timedelta(weeks=10)
    for name, value in values.items():
        setattr(facility, name, value)
    db.flush()
    return facility


def _inbox(
    db: Session,
    fid: str,
    at: datetime,
    *,
    subscription: str | None = "Subscription/abc",
    status: str = "done",
    reason: str | None = None,
    attempts: int = 0,
    done_at: datetime | None = None,
) -> None:
    db.execute(
        text(
            "INSERT INTO inbox (facility_id, dedup_key, received_at, subscription, status, reason, attempts,"
            " done_at, focus_type, focus_id) VALUES (:f, :k, :at, :s, :st, :r, :a, :d, 'Patient', 'p1')"
        ),
        {
            "f": fid,
            "k": f"k{next(_keys)}",
            "at": at,
            "s": subscription,
            "st": status,
            "r": reason,
            "a": attempts,
            "d": done_at,
        },
    )


def _adt(db: Session, fid: str, at: datetime, *, status: str = "done") -> None:
    db.execute(
        text(
            "INSERT INTO adt_inbox (facility_id, control_id, received_at, raw, status)"
            " VALUES (:f, :c, :at, 'MSH|', :st)"
        ),
        {"f": fid, "c": f"c{next(_keys)}", "at": at, "st": status},
    )


def _subscription(db: Session, fid: str, sid: str = "abc", **values: Any) -> None:
    row = {"status": "active", "heartbeat_s": 60, "last_error": None, "reactivations": 0, **values}
    db.execute(
        text(
            "INSERT INTO facility_subscriptions (facility_id, subscription_id, resource, requested, status,"
            " heartbeat_s, last_error, reactivations, created_at, updated_at)"
            " VALUES (:f, :sid, '{}', '{}', :status, :heartbeat_s, :last_error, :reactivations, :at, :at)"
        ),
        {"f": fid, "sid": sid, "at": NOW - timedelta(days=1), **row},
    )


def _ledger(db: Session, fid: str, subscription: str, **values: Any) -> None:
    columns = ", ".join(values)
    marks = ", ".join(f":{c}" for c in values)
    db.execute(
        text(
            f"INSERT INTO subscription_ledger (facility_id, subscription, {columns}) VALUES (:f, :s, {marks})"
        ),
        {"f": fid, "s": subscription, **values},
    )


def _one(health: list[FacilityHealth], fid: str) -> FacilityHealth:
    return next(h for h in health if h.facility_id == fid)


def _source(facility: FacilityHealth, source: str) -> SourceHealth:
    return next(s for s in facility.sources if s.source == source)


def test_events_are_counted_per_source_in_the_last_hour_and_the_detection_window(db: Session) -> None:
    _facility(db, hl7v2={"sending_application": "EPIC"})
    for minutes in (5, 20, 50, 90):
        _inbox(db, "fac-h", NOW - timedelta(minutes=minutes))
    _inbox(db, "fac-h", NOW + timedelta(minutes=1))  # after `now`: not seen yet
    _adt(db, "fac-h", NOW - timedelta(minutes=3))

    facility = _one(feed_health(db, NOW), "fac-h")

    sub = _source(facility, "subscription:abc")
    assert (sub.events_last_hour, sub.events_in_window) == (3, 1)  # default detection latency: 15 min
    assert sub.last_event_at == NOW - timedelta(minutes=5)
    adt = _source(facility, "adt")
    assert (adt.events_last_hour, adt.last_event_at) == (1, NOW - timedelta(minutes=3))
    assert facility.events_last_hour == 4


def test_a_ledger_subscription_and_the_kept_one_are_one_source_with_heartbeats_and_gaps(db: Session) -> None:
    _facility(db)
    _subscription(db, "fac-h", "abc", heartbeat_s=60)
    _ledger(
        db,
        "fac-h",
        "https://ehr.test/fhir/Subscription/abc",
        last_heartbeat_at=NOW - timedelta(minutes=2),
        last_notification_at=NOW - timedelta(minutes=7),
        missing="[[3, 5], [9, 9]]",
    )
    _ledger(db, "fac-h", "", last_notification_at=NOW - timedelta(days=3))  # a shape naming none

    facility = _one(feed_health(db, NOW), "fac-h")

    assert [s.source for s in facility.sources] == ["subscription:-", "subscription:abc"]
    sub = _source(facility, "subscription:abc")
    assert (sub.subscribed, sub.heartbeat_s, sub.status) == (True, 60, "active")
    assert sub.last_heartbeat_at == NOW - timedelta(minutes=2)
    assert sub.last_event_at == NOW - timedelta(minutes=7)
    assert sub.open_gaps == 4
    assert not _source(facility, "subscription:-").subscribed


def test_backlog_failures_dead_letters_quarantine_and_recovered_changes(db: Session) -> None:
    _facility(db)
    _facility(db, "fac-other")
    _inbox(db, "fac-h", NOW - timedelta(minutes=40), status="pending")
    _inbox(db, "fac-h", NOW - timedelta(minutes=30), status="pending", reason="ehr_unavailable", attempts=2)
    _inbox(db, "fac-h", NOW - timedelta(minutes=20), status="pending", reason="politeness_wait", attempts=1)
    _inbox(db, "fac-h", NOW - timedelta(minutes=10), status="dead", reason="ehr_auth_rejected",
           done_at=NOW - timedelta(minutes=9))  # fmt: skip
    _inbox(db, "fac-h", NOW - timedelta(days=2), status="dead", reason="ehr_http_4xx",
           done_at=NOW - timedelta(days=2))  # fmt: skip
    _adt(db, "fac-h", NOW - timedelta(minutes=50), status="pending")
    _inbox(db, "fac-other", NOW - timedelta(hours=5), status="pending", reason="ehr_transport", attempts=1)
    db.execute(
        text(
            "INSERT INTO token_events (facility_id, event, at) VALUES"
            " ('fac-h', 'issued', :t1), ('fac-h', 'rejected', :t2), ('fac-h', 'rejected', :t3)"
        ),
        {"t1": NOW - timedelta(hours=2), "t2": NOW - timedelta(hours=1), "t3": NOW - timedelta(minutes=4)},
    )
    db.execute(
        text(
            "INSERT INTO quarantine (facility_id, reason, detail, method, path, body_sha256, body,"
            " received_at, last_received_at) VALUES"
            " ('fac-h', 'not_a_notification', '-', 'POST', '/', 'a', '{}', :old, :old),"
            " ('fac-h', 'not_a_notification', '-', 'POST', '/', 'b', '{}', :recent, :recent)"
        ),
        {"old": NOW - timedelta(days=1), "recent": NOW - timedelta(minutes=1)},
    )
    db.execute(
        text(
            "INSERT INTO reconcile_recovered (facility_id, resource_type, resource_id, deleted, strategy,"
            " recovered_at) VALUES ('fac-h', 'Patient', 'p1', false, 'last-updated', :t1),"
            " ('fac-h', 'Patient', 'p2', false, 'last-updated', :t2)"
        ),
        {"t1": NOW - timedelta(minutes=30), "t2": NOW - timedelta(hours=3)},
    )
    db.execute(
        text(
            "INSERT INTO capability_events (facility_id, capability, change, detected_at) VALUES"
            " ('fac-h', 'Observation:_lastUpdated', 'gone', :t1),"
            " ('fac-h', 'Patient:_lastUpdated', 'gone', :t1), ('fac-h', 'Patient:_lastUpdated', 'back', :t2)"
        ),
        {"t1": NOW - timedelta(days=2), "t2": NOW - timedelta(days=1)},
    )

    health = feed_health(db, NOW)
    facility = _one(health, "fac-h")

    assert facility.backlog == 4  # three inbox rows and one ADT row undone
    assert facility.backlog_oldest_at == NOW - timedelta(minutes=50)
    assert facility.fetch_failures == 1  # backing off: ehr_unavailable (our own pacing is no failure)
    assert facility.auth_failures == 2  # one dead auth row in the window, one token refusal in it
    assert (facility.dead_letters, facility.dead_letters_new) == (2, 1)
    assert (facility.quarantined, facility.quarantined_recent) == (2, 1)
    assert facility.recovered_last_hour == 1
    assert facility.token_rejected_at == NOW - timedelta(minutes=4)
    assert facility.token_ok_at == NOW - timedelta(hours=2)
    assert facility.capabilities_gone == ("Observation:_lastUpdated",)
    other = _one(health, "fac-other")
    assert (other.backlog, other.fetch_failures, other.auth_failures) == (1, 1, 0)


def test_a_recovered_change_counts_toward_a_leak_once_it_settled(db: Session) -> None:
    """Within ``leak_settle`` of its recovery a late notification may still deliver the change (and
    withdraw it): only settled recoveries count, over a leak window that ends at the settle time."""
    _facility(db, feed_health={"leak_window": "PT1H", "leak_settle": "PT2M"})
    for n, ago in enumerate((timedelta(seconds=30), timedelta(minutes=3), timedelta(minutes=61))):
        db.execute(
            text(
                "INSERT INTO reconcile_recovered (facility_id, resource_type, resource_id, deleted, strategy,"
                " recovered_at) VALUES ('fac-h', 'Patient', :id, false, 'last-updated', :at)"
            ),
            {"id": f"p{n}", "at": NOW - ago},
        )

    facility = _one(feed_health(db, NOW), "fac-h")

    assert facility.recovered_in_leak_window == 2  # 3 and 61 minutes ago; 30 s ago not yet settled


def test_history_is_the_same_hour_of_past_weeks_the_facility_existed_for(db: Session) -> None:
    _facility(db, created=NOW - timedelta(weeks=2, hours=2))  # three weeks ago it did not exist yet
    for week, events in ((1, 6), (2, 2)):
        for n in range(events):
            _inbox(db, "fac-h", NOW - timedelta(weeks=week, minutes=5 + n))
    _inbox(db, "fac-h", NOW - timedelta(weeks=1, hours=2))  # another hour of that week

    source = _source(_one(feed_health(db, NOW), "fac-h"), "subscription:abc")

    assert source.history == (6, 2)
    assert source.learned_per_hour == 4


def test_one_facility_is_filtered(db: Session) -> None:
    _facility(db)
    _facility(db, "fac-other")

    assert [h.facility_id for h in feed_health(db, NOW, facility="fac-other")] == ["fac-other"]


def _quiet_heartbeat_source(db: Session) -> None:
    _facility(db)
    _subscription(db, "fac-h", "abc", heartbeat_s=60)
    _ledger(db, "fac-h", "Subscription/abc", last_heartbeat_at=NOW - timedelta(minutes=10))


def _checks(db: Session) -> list[FeedCheck]:
    return list(db.scalars(select(FeedCheck).order_by(FeedCheck.id)))


def _requested(db: Session) -> int:
    return int(
        db.scalar(
            select(func.count()).where(
                ReconcileRun.outcome == REQUESTED, ReconcileRun.trigger == QUIET_TRIGGER
            )
        )
        or 0
    )


def _run(db: Session, started: datetime, *, recovered: int, outcome: str = "complete") -> None:
    db.add(
        ReconcileRun(
            facility_id="fac-h",
            trigger=QUIET_TRIGGER,
            started_at=started,
            finished_at=started + timedelta(seconds=5),
            outcome=outcome,
            recovered=recovered,
        )
    )
    db.flush()


def test_an_overdue_heartbeat_asks_one_reconcile_and_leaves_the_key_unknown_until_it_ran(db: Session) -> None:
    _quiet_heartbeat_source(db)

    conditions, evaluated = evaluate(db, NOW)
    evaluate(db, NOW + timedelta(seconds=30))  # a second evaluator, or the next pass

    assert ("fac-h", "subscription:abc", "feed_quiet") not in evaluated
    assert not [c for c in conditions if c.kind == "feed_quiet"]
    checks = _checks(db)
    assert [(c.source, c.reason, c.outcome) for c in checks] == [
        ("subscription:abc", "heartbeat_overdue", None)
    ]
    assert _requested(db) == 1


def test_a_reconcile_that_recovered_changes_makes_the_quiet_feed_a_condition(db: Session) -> None:
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)
    _run(db, NOW + timedelta(seconds=10), recovered=4)

    conditions, evaluated = evaluate(db, NOW + timedelta(minutes=1))

    quiet = [c for c in conditions if c.kind == "feed_quiet"]
    assert [(c.source, c.details["recovered"]) for c in quiet] == [("subscription:abc", 4)]
    assert quiet[0].effective_severity == "critical"
    assert ("fac-h", "subscription:abc", "feed_quiet") in evaluated
    assert [(c.outcome, c.recovered) for c in _checks(db)] == [("leaking", 4)]


def test_a_reconcile_that_found_nothing_records_a_genuinely_quiet_feed_without_condition(db: Session) -> None:
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)
    _run(db, NOW - timedelta(minutes=1), recovered=7)  # began before the suspicion: not its answer
    _run(db, NOW + timedelta(seconds=10), recovered=0)

    conditions, evaluated = evaluate(db, NOW + timedelta(minutes=1))

    assert not [c for c in conditions if c.kind == "feed_quiet"]
    assert ("fac-h", "subscription:abc", "feed_quiet") in evaluated
    assert [(c.outcome, c.recovered) for c in _checks(db)] == [("quiet", 0)]
    assert _requested(db) == 1  # no new check until the detection latency passed


def test_a_genuinely_quiet_feed_is_checked_again_after_the_detection_latency(db: Session) -> None:
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)
    _run(db, NOW + timedelta(seconds=10), recovered=0)
    evaluate(db, NOW + timedelta(minutes=1))

    evaluate(db, NOW + timedelta(minutes=17))

    assert [c.outcome for c in _checks(db)] == ["quiet", None]
    assert _requested(db) == 2


def test_the_quiet_condition_resolves_once_the_source_speaks_again(db: Session) -> None:
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)
    _run(db, NOW + timedelta(seconds=10), recovered=4)
    db.execute(
        text("UPDATE subscription_ledger SET last_heartbeat_at = :t WHERE facility_id = 'fac-h'"),
        {"t": NOW + timedelta(minutes=2)},
    )

    conditions, evaluated = evaluate(db, NOW + timedelta(minutes=2, seconds=30))

    assert not [c for c in conditions if c.kind == "feed_quiet"]
    assert ("fac-h", "subscription:abc", "feed_quiet") in evaluated


def test_evaluate_reports_facility_conditions_from_recorded_rows(db: Session) -> None:
    _facility(db)
    _inbox(db, "fac-h", NOW - timedelta(hours=1), status="pending")
    db.execute(
        text("INSERT INTO token_events (facility_id, event, at) VALUES ('fac-h', 'rejected', :t)"),
        {"t": NOW - timedelta(minutes=3)},
    )

    conditions, evaluated = evaluate(db, NOW)

    assert {c.kind for c in conditions} == {"backlog_old", "token_failing"}
    assert {("fac-h", "facility", k) for k in ("error_rate", "dead_letters", "capability_gone")} <= evaluated


def test_signature_failures_are_the_refusals_of_the_error_window(db: Session) -> None:
    _facility(db)
    db.execute(
        text(
            "INSERT INTO webhook_refusals (facility_id, reason, minute, refusals) VALUES"
            " ('fac-h', 'bad_signature', :m1, 4), ('fac-h', 'wrong_secret', :m2, 2),"
            " ('fac-h', 'bad_signature', :old, 50)"
        ),
        {
            "m1": NOW - timedelta(minutes=2),
            "m2": NOW - timedelta(minutes=10),
            "old": NOW - timedelta(hours=2),
        },
    )

    facility = _one(feed_health(db, NOW), "fac-h")

    assert facility.signature_failures == 6


def test_evaluate_exports_each_evaluated_key_and_the_figures_as_gauges(db: Session) -> None:
    _facility(db, "fac-metrics")
    _inbox(db, "fac-metrics", NOW - timedelta(hours=1), status="pending")
    _inbox(db, "fac-metrics", NOW - timedelta(minutes=3))

    evaluate(db, NOW)

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    key = {"facility": "fac-metrics", "source": "facility"}
    assert sample("ehri_feed_condition", **key, kind="backlog_old") == 1
    assert sample("ehri_feed_condition", **key, kind="dead_letters") == 0
    assert sample("ehri_feed_backlog", facility="fac-metrics") == 1
    assert sample("ehri_feed_backlog_oldest_age_seconds", facility="fac-metrics") == 3600
    source = {"facility": "fac-metrics", "source": "subscription:abc"}
    assert sample("ehri_feed_events_last_hour", **source) == 1
    assert sample("ehri_feed_last_event_age_seconds", **source) == 180


def test_an_adt_feed_far_below_its_usual_weekday_rate_is_checked_and_a_quiet_night_is_not(
    db: Session,
) -> None:
    _facility(db, hl7v2={"sending_application": "EPIC"})
    for week in (1, 2, 3, 4):  # 40 messages in this weekday hour, 2 at this hour of the night
        for n in range(40):
            _adt(db, "fac-h", NOW - timedelta(weeks=week, minutes=1 + n))
        for n in range(2):
            _adt(db, "fac-h", NOW + timedelta(hours=12) - timedelta(weeks=week, minutes=1 + n))

    evaluate(db, NOW + timedelta(hours=12))  # 03:00: nothing arrives, nothing was expected
    assert _checks(db) == []

    evaluate(db, NOW)  # 15:00 on a Wednesday: nothing arrived in 15 minutes where 10 were due

    assert [(c.source, c.reason) for c in _checks(db)] == [("adt", "below_expected")]


def _recovering_run(db: Session, started: datetime, changes: int, *, finished: bool = True) -> None:
    """A reconcile run that started at ``started`` and recovered ``changes`` changes (a second later)."""
    run = ReconcileRun(
        facility_id="fac-h",
        trigger="schedule",
        started_at=started,
        finished_at=started + timedelta(seconds=5) if finished else None,
        outcome="complete" if finished else None,
        recovered=changes if finished else 0,
    )
    db.add(run)
    db.flush()
    for n in range(changes):
        db.execute(
            text(
                "INSERT INTO reconcile_recovered (facility_id, resource_type, resource_id, deleted, strategy,"
                " run_id, recovered_at) VALUES ('fac-h', 'Patient', :r, false, 'last-updated', :run, :at)"
            ),
            {"r": f"p{run.id}-{n}", "run": run.id, "at": started + timedelta(seconds=1)},
        )


def _kinds(conditions: list[Any]) -> set[str]:
    return {c.kind for c in conditions}


def test_what_a_quiet_checks_reconcile_recovers_is_its_feed_quiet_alone_not_also_a_leak(db: Session) -> None:
    """One stopped feed is one incident: the changes the reconcile it asked for recovers (running, or
    having decided the check) page as ``feed_quiet`` only, though notifications arrived in the leak
    window before the silence."""
    _quiet_heartbeat_source(db)
    for minutes in (20, 15, 12):
        _inbox(db, "fac-h", NOW - timedelta(minutes=minutes))
    evaluate(db, NOW)  # suspected: a check opened, its reconcile asked for
    _recovering_run(db, NOW + timedelta(seconds=10), 6, finished=False)

    running, _ = evaluate(db, NOW + timedelta(seconds=30))  # its pages committed, the run not finished
    db.execute(
        text(
            "UPDATE reconcile_runs SET finished_at = :t, outcome = 'complete', recovered = 6"
            " WHERE trigger = 'schedule'"
        ),
        {"t": NOW + timedelta(seconds=40)},
    )
    decided, evaluated = evaluate(db, NOW + timedelta(minutes=1))

    assert "feed_leaking" not in _kinds(running)
    assert "feed_quiet" in _kinds(decided)
    assert "feed_leaking" not in _kinds(decided)
    assert ("fac-h", "facility", "feed_leaking") in evaluated  # healthy, not unknown
    assert _one(feed_health(db, NOW + timedelta(minutes=1)), "fac-h").recovered_last_hour == 6


def test_changes_recovered_by_a_run_no_quiet_check_asked_for_are_a_leak(db: Session) -> None:
    _facility(db)
    for minutes in (20, 15, 12):
        _inbox(db, "fac-h", NOW - timedelta(minutes=minutes))
    _recovering_run(db, NOW - timedelta(minutes=10), 4)

    conditions, _ = evaluate(db, NOW)

    leaks = [c for c in conditions if c.kind == "feed_leaking"]
    assert [c.details["recovered"] for c in leaks] == [4]


def test_a_quiet_checks_recoveries_stay_its_own_until_they_left_the_settled_leak_window(db: Session) -> None:
    """A recovery counts toward a leak over a window that ends ``leak_settle`` ago: the quiet check's run
    is left out for as long, or its recoveries page a second time, as a ``feed_leaking``, a leak window
    after the check was decided."""
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)  # suspected: a check opened, its reconcile asked for
    _recovering_run(db, NOW + timedelta(seconds=10), 6)
    decided, _ = evaluate(db, NOW + timedelta(seconds=30))
    assert "feed_quiet" in _kinds(decided)
    later = NOW + timedelta(seconds=30) + timedelta(hours=1, seconds=30)  # leak window (PT1H) + 30 s
    for minutes in (20, 15, 12):  # notifications flow again
        _inbox(db, "fac-h", later - timedelta(minutes=minutes))

    conditions, evaluated = evaluate(db, later)

    assert ("fac-h", "facility", "feed_leaking") in evaluated
    assert "feed_leaking" not in _kinds(conditions)


def test_the_runs_carrying_on_a_quiet_checks_budget_stopped_reconcile_are_its_incident_too(
    db: Session,
) -> None:
    """The check's reconcile stopped at its time budget (partial) and decided it; the scheduled runs that
    carry on recovering the same silence, up to the first that completes, are the same ``feed_quiet``
    incident, not a ``feed_leaking`` page besides it. A run after that one is the feed's own again."""
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)  # suspected: a check opened, its reconcile asked for
    _recovering_run(db, NOW + timedelta(seconds=10), 6)
    db.execute(text("UPDATE reconcile_runs SET outcome = 'partial' WHERE trigger = 'schedule'"))
    decided, _ = evaluate(db, NOW + timedelta(seconds=30))
    assert "feed_quiet" in _kinds(decided)
    _recovering_run(db, NOW + timedelta(minutes=5), 4)  # carries on, and completes
    later = NOW + timedelta(minutes=10)
    for minutes in (20, 15, 12):  # notifications flow again, and heartbeats
        _inbox(db, "fac-h", later - timedelta(minutes=minutes))
    db.execute(text("UPDATE subscription_ledger SET last_heartbeat_at = :t"), {"t": later})

    conditions, evaluated = evaluate(db, later)

    assert ("fac-h", "facility", "feed_leaking") in evaluated
    assert "feed_leaking" not in _kinds(conditions)
    assert [c.outcome for c in _checks(db)] == ["leaking"]  # no second check: the feed is back

    _recovering_run(db, later + timedelta(minutes=1), 3)  # after the continuation completed

    conditions, _ = evaluate(db, later + timedelta(minutes=5))

    leaks = [c for c in conditions if c.kind == "feed_leaking"]
    assert [c.details["recovered"] for c in leaks] == [3]


def test_a_failed_reconcile_that_recovered_changes_still_answers_the_quiet_check(db: Session) -> None:
    """A run fails as a whole when one type fails (a search refused for good, say), though the other types
    recovered what the silent feed never delivered: that is the check's answer (leaking). Left open, the
    check waits for a complete run that never comes, and while it is open the runs' recoveries are no
    ``feed_leaking`` either: the stopped feed pages nobody."""
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)
    _recovering_run(db, NOW + timedelta(seconds=10), 4)
    db.execute(text("UPDATE reconcile_runs SET outcome = 'failed' WHERE trigger = 'schedule'"))

    conditions, _ = evaluate(db, NOW + timedelta(minutes=1))

    quiet = [c for c in conditions if c.kind == "feed_quiet"]
    assert [(c.source, c.details["recovered"]) for c in quiet] == [("subscription:abc", 4)]
    assert [(c.outcome, c.recovered) for c in _checks(db)] == [("leaking", 4)]


def test_a_failed_reconcile_that_recovered_nothing_decides_nothing(db: Session) -> None:
    _quiet_heartbeat_source(db)
    evaluate(db, NOW)
    _run(db, NOW + timedelta(seconds=10), recovered=0, outcome="failed")

    evaluate(db, NOW + timedelta(minutes=1))

    assert [c.outcome for c in _checks(db)] == [None]

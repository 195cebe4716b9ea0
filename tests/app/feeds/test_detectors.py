"""The detectors: pure functions of health, thresholds and now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.facilities.schemas import FeedHealthConfig
from app.feeds.detectors import BELOW_EXPECTED, HEARTBEAT_OVERDUE, business_hours, detect
from app.feeds.health import CHECK_LEAKING, CHECK_QUIET, FacilityHealth, QuietCheck, SourceHealth

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)  # Wednesday 15:00 UTC, 10:00 in New York
NIGHT = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)  # Wednesday 22:00 in New York
SATURDAY_NOON = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)
NEW_YORK = FeedHealthConfig(timezone="America/New_York")


def _facility(
    *sources: SourceHealth, config: FeedHealthConfig = NEW_YORK, **values: object
) -> FacilityHealth:
    return FacilityHealth("fac-1", config=config, sources=sources, **values)  # type: ignore[arg-type]


def _heartbeat_source(
    last: datetime, *, heartbeat_s: int = 60, check: QuietCheck | None = None
) -> SourceHealth:
    return SourceHealth(
        "fac-1",
        "subscription:abc",
        last_heartbeat_at=last,
        subscribed=True,
        heartbeat_s=heartbeat_s,
        check=check,
    )


def _kinds(facility: FacilityHealth, now: datetime = NOW) -> set[str]:
    return {c.kind for c in detect([facility], now).conditions}


def test_business_hours_are_counted_in_the_facility_time_zone() -> None:
    assert business_hours(NEW_YORK, NOW)
    assert not business_hours(NEW_YORK, NIGHT)
    assert not business_hours(NEW_YORK, SATURDAY_NOON)
    assert not business_hours(FeedHealthConfig(), datetime(2026, 12, 2, 6, 0, tzinfo=UTC))


@given(
    heartbeat_s=st.integers(min_value=1, max_value=3600),
    slack=st.floats(min_value=1.0, max_value=5.0),
    beyond=st.integers(min_value=1, max_value=86400),
)
def test_a_heartbeat_overdue_by_period_times_slack_is_suspected_quiet(
    heartbeat_s: int, slack: float, beyond: int
) -> None:
    config = FeedHealthConfig(heartbeat_slack=slack)
    last = NOW - timedelta(seconds=heartbeat_s * slack + beyond)

    detection = detect([_facility(_heartbeat_source(last, heartbeat_s=heartbeat_s), config=config)], NOW)

    assert [(s.source, s.reason) for s in detection.suspects] == [("subscription:abc", HEARTBEAT_OVERDUE)]
    assert ("fac-1", "subscription:abc", "feed_quiet") not in detection.evaluated  # unknown until checked


@given(heartbeat_s=st.integers(min_value=1, max_value=3600), within=st.floats(min_value=0, max_value=1))
def test_a_heartbeat_within_period_times_slack_is_healthy(heartbeat_s: int, within: float) -> None:
    last = NOW - timedelta(seconds=heartbeat_s * 2.0 * within)

    detection = detect([_facility(_heartbeat_source(last, heartbeat_s=heartbeat_s))], NOW)

    assert detection.suspects == []
    assert ("fac-1", "subscription:abc", "feed_quiet") in detection.evaluated


NIGHT_HOURS = [*range(19, 24), *range(0, 7)]


@given(
    history=st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=4),
    events=st.integers(min_value=0, max_value=3),
    weekend=st.booleans(),
    data=st.data(),
)
def test_a_clinic_closed_at_night_or_at_the_weekend_raises_nothing(
    history: list[int], events: int, weekend: bool, data: st.DataObject
) -> None:
    # Off hours in New York (UTC-5 in December): any hour of a Saturday, or a weekday night.
    hour = data.draw(st.integers(0, 23) if weekend else st.sampled_from(NIGHT_HOURS))
    now = datetime(2026, 12, 5 if weekend else 2, tzinfo=UTC) + timedelta(hours=hour + 5)
    assert not business_hours(NEW_YORK, now)
    # What the clinic used to bring at this hour is below the off-hours floor (20 per 15-min window).
    source = SourceHealth("fac-1", "subscription:abc", events_in_window=events, history=tuple(history))

    detection = detect([_facility(source)], now)

    assert detection.suspects == []
    assert not [c for c in detection.conditions if c.kind == "feed_quiet"]


def test_a_feed_far_below_its_learned_business_hours_rate_is_suspected() -> None:
    source = SourceHealth("fac-1", "subscription:abc", events_in_window=1, history=(120, 100, 140))

    detection = detect([_facility(source)], NOW)

    assert [s.reason for s in detection.suspects] == [BELOW_EXPECTED]


def test_a_configured_expectation_replaces_the_learned_one() -> None:
    config = FeedHealthConfig(timezone="America/New_York", expected_per_hour=200)
    source = SourceHealth("fac-1", "subscription:abc", events_in_window=3)  # no history at all

    assert [s.reason for s in detect([_facility(source, config=config)], NOW).suspects] == [BELOW_EXPECTED]
    assert detect([_facility(source)], NOW).suspects == []  # nothing learned, nothing configured


def test_a_feed_at_its_usual_rate_is_healthy() -> None:
    source = SourceHealth("fac-1", "subscription:abc", events_in_window=25, history=(120, 100, 140))

    detection = detect([_facility(source)], NOW)

    assert detection.suspects == []
    assert ("fac-1", "subscription:abc", "feed_quiet") in detection.evaluated


def test_a_retired_subscription_is_not_judged_for_quiet() -> None:
    kept = _heartbeat_source(NOW - timedelta(seconds=10))
    retired = SourceHealth("fac-1", "subscription:old", history=(500, 500))

    detection = detect([_facility(kept, retired)], NOW)

    assert detection.suspects == []
    assert ("fac-1", "subscription:old", "feed_quiet") not in detection.evaluated


def test_a_leaking_check_of_the_same_silence_is_the_quiet_condition() -> None:
    silent = NOW - timedelta(minutes=10)
    check = QuietCheck(HEARTBEAT_OVERDUE, NOW - timedelta(minutes=7), silent, CHECK_LEAKING, 5, NOW)

    conditions = detect([_facility(_heartbeat_source(silent, check=check))], NOW).conditions

    assert [(c.kind, c.details["recovered"]) for c in conditions] == [("feed_quiet", 5)]


def test_a_quiet_check_of_an_earlier_silence_asks_for_a_new_one() -> None:
    check = QuietCheck(
        HEARTBEAT_OVERDUE, NOW - timedelta(hours=3), NOW - timedelta(hours=4), CHECK_QUIET, 0, NOW
    )

    detection = detect([_facility(_heartbeat_source(NOW - timedelta(hours=1), check=check))], NOW)

    assert len(detection.suspects) == 1
    assert detection.conditions == []


def test_error_rate_counts_fetch_auth_and_quarantine_against_events() -> None:
    busy = SourceHealth("fac-1", "subscription:abc", events_in_error_window=100)

    assert "error_rate" in _kinds(_facility(fetch_failures=20, auth_failures=5, quarantined_recent=5))
    assert "error_rate" not in _kinds(_facility(busy, fetch_failures=20))  # 20 of 120: below 20 %
    assert "error_rate" not in _kinds(_facility(fetch_failures=4))  # fewer than error_min


def test_backlog_older_than_its_threshold() -> None:
    assert "backlog_old" in _kinds(_facility(backlog=3, backlog_oldest_at=NOW - timedelta(minutes=16)))
    assert "backlog_old" not in _kinds(_facility(backlog=3, backlog_oldest_at=NOW - timedelta(minutes=14)))


def test_dead_letters_appearing_in_the_window() -> None:
    assert "dead_letters" in _kinds(_facility(dead_letters=3, dead_letters_new=1))
    assert "dead_letters" not in _kinds(_facility(dead_letters=3, dead_letters_new=0))


def test_token_failing_until_a_token_is_issued_again() -> None:
    rejected = NOW - timedelta(hours=2)
    assert "token_failing" in _kinds(_facility(token_rejected_at=rejected))
    assert "token_failing" in _kinds(
        _facility(token_rejected_at=rejected, token_ok_at=rejected - timedelta(1))
    )
    assert "token_failing" not in _kinds(_facility(token_rejected_at=rejected, token_ok_at=NOW))


def test_subscription_down_when_reactivation_brought_nothing_back() -> None:
    down = SourceHealth(
        "fac-1",
        "subscription:abc",
        subscribed=True,
        status="error",
        last_error="subscription_error",
        reactivations=2,
        last_heartbeat_at=NOW - timedelta(minutes=30),
    )
    recovering = SourceHealth(
        "fac-1",
        "subscription:abc",
        subscribed=True,
        status="requested",
        last_error="subscription_error",
        reactivations=1,
        last_handshake_at=NOW - timedelta(minutes=1),
    )

    assert "subscription_down" in _kinds(_facility(down))
    assert "subscription_down" not in _kinds(_facility(recovering))


def test_capability_gone_and_leaking() -> None:
    busy = SourceHealth("fac-1", "subscription:abc", events_in_leak_window=40)

    assert "capability_gone" in _kinds(_facility(capabilities_gone=("Observation:_lastUpdated",)))
    assert "feed_leaking" in _kinds(_facility(busy, recovered_in_leak_window=12))
    assert "feed_leaking" not in _kinds(
        _facility(recovered_in_leak_window=12)
    )  # nothing arrived: quiet's case


def test_a_disabled_facility_is_not_evaluated() -> None:
    detection = detect([_facility(enabled=False, dead_letters_new=4)], NOW)

    assert (detection.conditions, detection.evaluated) == ([], set())


def test_summaries_and_details_hold_ids_and_counts_only() -> None:
    facility = _facility(
        _heartbeat_source(NOW - timedelta(hours=1)),
        fetch_failures=30,
        backlog=2,
        backlog_oldest_at=NOW - timedelta(hours=1),
        dead_letters_new=1,
        token_rejected_at=NOW,
    )
    for condition in detect([facility], NOW).conditions:
        assert "fac-1" in condition.summary
        assert all(isinstance(v, int | float | str | None) for v in condition.details.values())

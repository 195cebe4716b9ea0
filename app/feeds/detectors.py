"""The feed-health detectors: pure functions from health (``app.feeds.health``), each facility's thresholds
(``FeedHealthConfig``, on its ``FacilityHealth``) and ``now`` to the conditions that hold now and the keys
that were evaluated (``app.alerts.conditions``). No I/O, no clock.

Per facility (source ``facility``): ``error_rate``, ``backlog_old``, ``dead_letters``, ``token_failing``,
``capability_gone``, ``feed_leaking``. Per source: ``subscription_down`` (the kept subscription) and
``feed_quiet``, decided in two steps:

1. *suspected*: a source with heartbeats sent nothing for ``heartbeat_s x heartbeat_slack``; a source
   without brought fewer than ``quiet_ratio`` x the events expected in the detection window at this time
   of the week, where at least the floor was expected (a closed clinic at night expects nothing, so is
   never suspected);
2. a suspected source asks for a reconcile (``Detection.suspects``; ``app.feeds.service`` opens the
   check): until it has run, the key is not evaluated (an alert stays as it is). Changes recovered →
   ``feed_quiet`` holds while the silence lasts; nothing changed → genuinely quiet: no condition, and
   the check is repeated once ``detection_latency`` passed if the source is still suspected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from app.alerts.conditions import FACILITY_SOURCE, AlertKind, Condition
from app.facilities.schemas import FeedHealthConfig
from app.feeds.health import ADT_SOURCE, CHECK_LEAKING, CHECK_QUIET, FacilityHealth, SourceHealth

Key = tuple[str, str, str]

#: Why a source is suspected quiet (``feed_checks.reason``).
HEARTBEAT_OVERDUE = "heartbeat_overdue"
BELOW_EXPECTED = "below_expected"

#: A subscription found in these states (or gone) by the periodic check, which re-activates it at once.
DOWN_STATUSES = frozenset({"error", "off"})
DOWN_ERRORS = frozenset({"subscription_error", "subscription_off", "subscription_gone"})

FACILITY_KINDS: tuple[AlertKind, ...] = (
    "error_rate",
    "backlog_old",
    "dead_letters",
    "token_failing",
    "capability_gone",
    "feed_leaking",
)

_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Suspect:
    """A source suspected quiet that needs a reconcile to tell quiet from leaking."""

    facility_id: str
    source: str
    reason: str
    silent_since: datetime | None


@dataclass
class Detection:
    conditions: list[Condition] = field(default_factory=list)
    evaluated: set[Key] = field(default_factory=set)
    suspects: list[Suspect] = field(default_factory=list)

    def add(self, key: Key, condition: Condition | None) -> None:
        self.evaluated.add(key)
        if condition is not None:
            self.conditions.append(condition)


def business_hours(config: FeedHealthConfig, now: datetime) -> bool:
    """Whether ``now`` falls in the facility's business hours (its own time zone)."""
    local = now.astimezone(ZoneInfo(config.timezone))
    hours = config.business_hours
    return local.isoweekday() in hours.days and hours.start <= local.hour < hours.end


def expected_in_window(
    source: SourceHealth, config: FeedHealthConfig, now: datetime
) -> tuple[float, float] | None:
    """(events expected in the detection window at this time of the week, the floor below which that is
    not judged), or None when nothing is configured and nothing was learned yet."""
    open_now = business_hours(config, now)
    configured = config.expected_per_hour if open_now else config.off_hours_expected_per_hour
    per_hour = configured if configured is not None else source.learned_per_hour
    if per_hour is None:
        return None
    floor = config.min_expected if open_now else config.off_hours_min_expected
    return per_hour * (config.detection_latency / _HOUR), floor


def quiet_suspicion(
    source: SourceHealth, config: FeedHealthConfig, now: datetime, *, heartbeats: bool
) -> str | None:
    """Why ``source`` is suspected quiet now (``HEARTBEAT_OVERDUE``, ``BELOW_EXPECTED``), or None."""
    if heartbeats:
        assert source.heartbeat_s is not None
        reference = source.last_activity_at or source.subscribed_at
        if reference is None:
            return None
        allowed = timedelta(seconds=source.heartbeat_s * config.heartbeat_slack)
        return HEARTBEAT_OVERDUE if now - reference > allowed else None
    expected = expected_in_window(source, config, now)
    if expected is None:
        return None
    events, floor = expected
    if events < floor or events <= 0:
        return None  # too little is expected now for silence to mean anything (a closed clinic at night)
    return BELOW_EXPECTED if source.events_in_window < config.quiet_ratio * events else None


def _judged_for_quiet(facility: FacilityHealth, source: SourceHealth) -> bool:
    """A subscription source other than the one the facility keeps now is a retired one (re-created):
    its silence is expected. Without a kept subscription, every source seen is judged."""
    if source.source == ADT_SOURCE or source.subscribed:
        return True
    return not any(s.subscribed for s in facility.sources)


def detect_quiet(facility: FacilityHealth, source: SourceHealth, now: datetime, detection: Detection) -> None:
    config = facility.config
    key: Key = (facility.facility_id, source.source, "feed_quiet")
    heartbeats = source.subscribed and source.heartbeat_s is not None
    reason = quiet_suspicion(source, config, now, heartbeats=heartbeats)
    if reason is None:
        detection.add(key, None)
        return
    silent_since = source.last_activity_at
    check = source.check
    same_silence = check is not None and (
        silent_since is None or (check.silent_since is not None and silent_since <= check.silent_since)
    )
    if check is not None and check.outcome is None:
        return  # its reconcile has not run yet: unknown, the alert (if any) stays as it is
    if check is not None and same_silence and check.outcome == CHECK_LEAKING:
        recovered = check.recovered or 0
        detection.add(
            key,
            Condition(
                facility.facility_id,
                source.source,
                "feed_quiet",
                f"{source.source} of {facility.facility_id} is quiet ({reason}) and a reconcile recovered "
                f"{recovered} changes it never delivered",
                details={
                    "reason": reason,
                    "recovered": recovered,
                    "silent_since": silent_since.isoformat() if silent_since else None,
                    "suspected_at": check.suspected_at.isoformat(),
                    "heartbeat_s": source.heartbeat_s,
                    "events_in_window": source.events_in_window,
                },
            ),
        )
        return
    fresh = (
        check is not None
        and check.decided_at is not None
        and now - check.decided_at < config.detection_latency
    )
    if check is not None and same_silence and check.outcome == CHECK_QUIET and fresh:
        detection.add(key, None)  # genuinely quiet: the reconcile found nothing changed
        return
    detection.suspects.append(Suspect(facility.facility_id, source.source, reason, silent_since))


def detect_subscription_down(
    facility: FacilityHealth, source: SourceHealth, now: datetime, detection: Detection
) -> None:
    """The kept subscription is in error/off (or gone) and the re-activation the check tried has not
    brought it back: nothing arrived from it for ``subscription_down_after``."""
    if not source.subscribed:
        return
    key: Key = (facility.facility_id, source.source, "subscription_down")
    down = source.status in DOWN_STATUSES or source.last_error in DOWN_ERRORS
    last = source.last_activity_at
    unrecovered = last is None or now - last >= facility.config.subscription_down_after
    if not (down and unrecovered):
        detection.add(key, None)
        return
    detection.add(
        key,
        Condition(
            facility.facility_id,
            source.source,
            "subscription_down",
            f"{source.source} of {facility.facility_id} is {source.status or '-'} "
            f"({source.last_error or '-'}) after {source.reactivations} re-activations",
            details={
                "status": source.status,
                "reason": source.last_error,
                "reactivations": source.reactivations,
                "last_activity_at": last.isoformat() if last else None,
            },
        ),
    )


def _window_events(facility: FacilityHealth, attribute: str) -> int:
    return sum(int(getattr(s, attribute)) for s in facility.sources)


def detect_error_rate(facility: FacilityHealth, now: datetime) -> Condition | None:
    config = facility.config
    failures = (
        facility.fetch_failures
        + facility.auth_failures
        + facility.signature_failures
        + facility.quarantined_recent
    )
    events = _window_events(facility, "events_in_error_window")
    if failures < config.error_min:
        return None
    rate = failures / (events + failures)
    if rate <= config.error_rate:
        return None
    return Condition(
        facility.facility_id,
        FACILITY_SOURCE,
        "error_rate",
        f"{failures} failures against {events} events in {_minutes(config.error_window)} at "
        f"{facility.facility_id} (fetch {facility.fetch_failures}, auth {facility.auth_failures}, "
        f"signature {facility.signature_failures}, quarantined {facility.quarantined_recent})",
        details={
            "failures": failures,
            "events": events,
            "rate": round(rate, 3),
            "fetch": facility.fetch_failures,
            "auth": facility.auth_failures,
            "signature": facility.signature_failures,
            "quarantined": facility.quarantined_recent,
            "window_s": config.error_window.total_seconds(),
        },
    )


def detect_backlog_old(facility: FacilityHealth, now: datetime) -> Condition | None:
    oldest = facility.backlog_oldest_at
    if oldest is None or now - oldest <= facility.config.backlog_age:
        return None
    age = (now - oldest).total_seconds()
    return Condition(
        facility.facility_id,
        FACILITY_SOURCE,
        "backlog_old",
        f"{facility.backlog} undone rows at {facility.facility_id}, the oldest {int(age)} s old",
        details={"backlog": facility.backlog, "oldest_age_s": int(age)},
    )


def detect_dead_letters(facility: FacilityHealth, now: datetime) -> Condition | None:
    if facility.dead_letters_new <= 0:
        return None
    return Condition(
        facility.facility_id,
        FACILITY_SOURCE,
        "dead_letters",
        f"{facility.dead_letters_new} new dead letters at {facility.facility_id} "
        f"({facility.dead_letters} in all)",
        details={"new": facility.dead_letters_new, "total": facility.dead_letters},
    )


def detect_token_failing(facility: FacilityHealth, now: datetime) -> Condition | None:
    """The token endpoint's last answer was a refusal and no token was issued since (revoked or wrong
    credentials): the client does not retry in a loop, so the refusal stands until a token is issued."""
    rejected, ok = facility.token_rejected_at, facility.token_ok_at
    if rejected is None or (ok is not None and ok >= rejected):
        return None
    return Condition(
        facility.facility_id,
        FACILITY_SOURCE,
        "token_failing",
        f"the token endpoint of {facility.facility_id} refuses our credentials",
        details={"rejected_at": rejected.isoformat(), "last_ok_at": ok.isoformat() if ok else None},
    )


def detect_capability_gone(facility: FacilityHealth, now: datetime) -> Condition | None:
    if not facility.capabilities_gone:
        return None
    gone = facility.capabilities_gone
    return Condition(
        facility.facility_id,
        FACILITY_SOURCE,
        "capability_gone",
        f"{len(gone)} capabilities gone at {facility.facility_id}: {', '.join(gone[:5])}",
        details={"gone": len(gone), "capabilities": ",".join(gone)[:500]},
    )


def detect_leaking(facility: FacilityHealth, now: datetime) -> Condition | None:
    """Notifications arrive, yet the reconciler recovered changes none of them delivered."""
    config = facility.config
    recovered = facility.recovered_in_leak_window
    events = _window_events(facility, "events_in_leak_window")
    if recovered < config.leak_min or events <= 0:
        return None
    return Condition(
        facility.facility_id,
        FACILITY_SOURCE,
        "feed_leaking",
        f"the reconciler recovered {recovered} changes at {facility.facility_id} in "
        f"{_minutes(config.leak_window)} that {events} notifications did not deliver",
        details={"recovered": recovered, "events": events, "window_s": config.leak_window.total_seconds()},
    )


_FACILITY_DETECTORS = {
    "error_rate": detect_error_rate,
    "backlog_old": detect_backlog_old,
    "dead_letters": detect_dead_letters,
    "token_failing": detect_token_failing,
    "capability_gone": detect_capability_gone,
    "feed_leaking": detect_leaking,
}


def detect(facilities: Iterable[FacilityHealth], now: datetime) -> Detection:
    """Every condition that holds now, the keys evaluated, and the sources to check for quiet.
    A disabled facility is not evaluated (its alerts stay as they are)."""
    detection = Detection()
    for facility in facilities:
        if not facility.enabled:
            continue
        for kind in FACILITY_KINDS:
            key: Key = (facility.facility_id, FACILITY_SOURCE, kind)
            detection.add(key, _FACILITY_DETECTORS[kind](facility, now))
        for source in facility.sources:
            detect_subscription_down(facility, source, now, detection)
            if _judged_for_quiet(facility, source):
                detect_quiet(facility, source, now, detection)
    return detection


def _minutes(window: timedelta) -> str:
    return f"{int(window.total_seconds() // 60)} min"

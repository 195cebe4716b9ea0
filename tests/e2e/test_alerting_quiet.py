"""Quiet detection end to end, with real processes (ehrsim over HTTP, the receiver, a worker, beat,
Postgres, Redis) and a fake PagerDuty over real HTTP: a feed stopped while the data keeps changing pages
once (``feed_quiet``) within the facility's detection window, the reconcile it asked for recovers every
change, and the page resolves once notifications flow again; a clinic whose data genuinely stopped
changing, at night or by day, pages nobody."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.ledger import LedgerReport
from devstack.processes import wait_until
from devstack.scenario import Scenario
from tests.e2e.alerting import PagerDuty, alert_cycles, configure, paging
from tests.e2e.sql import scalar

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
DETECTION_S = 5
TYPES = ["Patient", "Observation", "Condition"]
#: One run at start (an empty EHR); afterwards only the reconciles a quiet check asks for.
#: Every run recrawls (a delete is found by the ids a search no longer returns).
RECONCILE = {"interval": "PT1H", "recrawl_interval": "PT1S", "types": TYPES}
ENV = {"EHRI_RECONCILE_TICK": "PT0.5S"}
#: Open every hour of every day, expecting a notification a second: five in each detection window.
DAYTIME = {
    "detection_latency": f"PT{DETECTION_S}S",
    "business_hours": {"days": [1, 2, 3, 4, 5, 6, 7], "start": 0, "end": 24},
    "expected_per_hour": 3600,
    "min_expected": 1,
}


@pytest.fixture
def pagerduty(tmp_path: Path) -> Iterator[PagerDuty]:
    with paging(tmp_path) as pd:
        yield pd


def _faults(scenario: Scenario, body: dict[str, Any]) -> None:
    httpx.post(f"{scenario.sim_url}/_admin/{FACILITY}/faults", json=body, timeout=10).raise_for_status()


def _first_reconcile(scenario: Scenario) -> None:
    wait_until(
        lambda: bool(scalar(scenario, "SELECT count(*) FROM reconcile_runs WHERE outcome = 'complete'")),
        timeout=30,
        what="the first reconcile",
    )


def _inbox(scenario: Scenario) -> int:
    return int(scalar(scenario, f"SELECT count(*) FROM inbox WHERE facility_id = '{FACILITY}'"))


def _created_and_deleted_since(before: list[dict[str, Any]], truth: list[dict[str, Any]]) -> set[str]:
    known = {(r["resourceType"], r["id"]) for r in before}
    return {
        f"{r['resourceType']}/{r['id']}"
        for r in truth
        if r["deleted"] and (r["resourceType"], r["id"]) not in known
    }


def _settled_ledger(scenario: Scenario, unseeable: set[str]) -> LedgerReport:
    """The ledger once nothing is pending and every change is in Postgres at the EHR's version, but for
    ``unseeable`` ones; fails with the report when that never happens."""
    reports: list[LedgerReport] = []

    def settled() -> bool:
        report = scenario.wait_for_ledger(FACILITY, timeout=0)  # one look
        reports.append(report)
        wrong = set(report.missing) - unseeable or report.behind or report.not_tombstoned
        return report.drained and not wrong

    try:
        wait_until(settled, timeout=30, interval=0.25, what="the ledger")
    except TimeoutError:
        raise AssertionError(reports[-1]) from None
    return reports[-1]


def test_a_stopped_feed_pages_once_within_its_window_is_reconciled_and_resolves(
    scenario: Scenario, pagerduty: PagerDuty
) -> None:
    configure(scenario, FACILITY, feed_health=DAYTIME, reconcile=RECONCILE)
    scenario.start(workers=1, concurrency=2, beat=True, env={**ENV, **pagerduty.env})
    _first_reconcile(scenario)
    scenario.make_changes(FACILITY, 10)
    report = scenario.wait_for_ledger(FACILITY, timeout=30)
    assert report.ok, (report.missing, report.behind, report.inbox)
    delivered = _inbox(scenario)
    before = scenario.truth(FACILITY)

    _faults(scenario, {"feed_stopped": True})
    stopped = time.monotonic()
    # The data keeps changing until the feed is suspected quiet: the reconcile that suspicion asks for
    # is the one that must find what the silence hid.
    while not scalar(scenario, f"SELECT count(*) FROM feed_checks WHERE facility_id = '{FACILITY}'"):
        assert time.monotonic() - stopped < 4 * DETECTION_S, "never suspected quiet"
        scenario.make_changes(FACILITY, 2)
        time.sleep(0.3)  # paces the changes, synchronizes nothing
    assert _inbox(scenario) == delivered  # nothing arrived since the stop

    wait_until(lambda: bool(pagerduty.triggers()), timeout=4 * DETECTION_S, what="the page")
    latency = time.monotonic() - stopped
    print(f"feed_quiet paged {latency:.1f} s after the feed stopped (detection latency {DETECTION_S} s)")
    # suspected once the window passed with nothing, then one reconcile and one evaluation to page
    assert latency <= DETECTION_S + 5, latency
    (trigger,) = pagerduty.triggers()
    assert trigger["payload"]["class"] == "feed_quiet"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["custom_details"]["details"]["recovered"] > 0

    # the quiet check's reconcile found it all: lost = 0, but for what no search can ever return (a
    # resource created and deleted within the silence, whose notifications were all dropped)
    unseeable = _created_and_deleted_since(before, scenario.truth(FACILITY))
    report = _settled_ledger(scenario, unseeable)
    print(
        f"ledger after the quiet reconcile: {report.matched} of {report.expected} matched, lost 0"
        f" ({len(unseeable)} created and deleted within the silence, never visible to a search)"
    )
    check = scenario.sql(
        "SELECT c.outcome, c.recovered, r.recovered AS run_recovered FROM feed_checks c"
        " JOIN reconcile_runs r ON r.id = c.run_id WHERE c.facility_id = :f",
        f=FACILITY,
    )
    assert [(c.outcome, c.recovered == c.run_recovered) for c in check] == [("leaking", True)]

    _faults(scenario, {"feed_stopped": False})
    resumed = _inbox(scenario)

    def resolved() -> bool:
        scenario.make_changes(FACILITY, 2)  # notifications flow again
        return any(e["event_action"] == "resolve" for e in pagerduty.events())

    wait_until(resolved, timeout=30, interval=0.3, what="the resolve")
    assert _inbox(scenario) > resumed
    _settled_ledger(scenario, unseeable)
    # a few more cycles with the feed flowing: nothing else is paged for this one incident
    cycles = alert_cycles(scenario)
    wait_until(lambda: alert_cycles(scenario) >= cycles + 3, timeout=15, what="three more alert cycles")

    # every event PagerDuty received: one trigger and its resolve, under one dedup key
    key = trigger["dedup_key"]
    assert pagerduty.actions() == [("trigger", key), ("resolve", key)], pagerduty.actions()
    states = scenario.sql("SELECT kind, state FROM alerts WHERE facility_id = :f", f=FACILITY)
    assert [(a.kind, a.state) for a in states] == [("feed_quiet", "resolved")], (
        scenario.sql("SELECT * FROM alerts"),
        scenario.sql("SELECT * FROM alert_events"),
        scenario.sql("SELECT * FROM alert_deliveries"),
    )


NIGHT_WINDOW_S = 2
NIGHT_WINDOWS = 12  # one detection window standing in for each hour of a clinic's night


def _local_zone(*, hour: int) -> str:
    """A fixed-offset time zone in which it is ``hour`` o'clock now (``Etc/GMT-N`` is UTC+N)."""
    offset = (hour - datetime.now(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"


def _feeds_json(scenario: Scenario) -> dict[str, Any]:
    """``ehr-ingest feeds --json`` as an operator runs it."""
    argv = [str(Path(sys.executable).parent / "ehr-ingest"), "feeds", "--json", "--facility", FACILITY]
    done = subprocess.run(argv, env=scenario.env(), capture_output=True, check=True, timeout=60)
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _quiet_clinic(scenario: Scenario, pagerduty: PagerDuty, *, timezone: str) -> None:
    """Start everything, deliver one burst of changes, then nothing; then give the facility its clock:
    open by day (a notification a second expected), closed at night (one a minute, below the night's
    floor). The day and the night differ in the facility's time zone only. Its thresholds are set once
    the burst is in, so that no check races the burst's own notifications."""
    configure(scenario, FACILITY, reconcile=RECONCILE)
    scenario.start(workers=1, concurrency=2, beat=True, env={**ENV, **pagerduty.env})
    _first_reconcile(scenario)
    scenario.make_changes(FACILITY, 10)
    report = scenario.wait_for_ledger(FACILITY, timeout=30)
    assert report.ok, (report.missing, report.behind, report.inbox)
    configure(
        scenario,
        FACILITY,
        feed_health={
            "detection_latency": f"PT{NIGHT_WINDOW_S}S",
            "timezone": timezone,
            "business_hours": {"days": [1, 2, 3, 4, 5, 6, 7], "start": 7, "end": 19},
            "expected_per_hour": 3600,
            "min_expected": 1,  # two expected in a window by day: judged
            "off_hours_expected_per_hour": 60,  # a thirtieth at night: below the night's floor (20)
        },
    )


def test_a_closed_clinic_whose_data_stops_changing_pages_nobody_all_night(
    scenario: Scenario, pagerduty: PagerDuty
) -> None:
    _quiet_clinic(scenario, pagerduty, timezone=_local_zone(hour=2))
    last = scenario.sql("SELECT max(received_at) AS at FROM inbox WHERE facility_id = :f", f=FACILITY)[0].at
    cycles = alert_cycles(scenario)

    # the night: twelve detection windows without a change, every one of them evaluated
    night_s = NIGHT_WINDOWS * NIGHT_WINDOW_S
    wait_until(
        lambda: (
            (datetime.now(UTC) - last).total_seconds() > night_s + NIGHT_WINDOW_S
            and alert_cycles(scenario) >= cycles + night_s
        ),
        timeout=night_s + 20,
        what=f"{NIGHT_WINDOWS} silent detection windows, each evaluated",
    )

    assert pagerduty.sink.received == []
    assert scenario.sql("SELECT kind FROM alerts") == []
    assert scenario.sql("SELECT id FROM feed_checks") == []  # nothing expected at night: nothing suspected
    [facility] = _feeds_json(scenario)["facilities"]
    [source] = facility["sources"]
    assert (source["source"], source["events_in_window"], source["quiet_check"]) == (
        f"subscription:sub-{FACILITY}",
        0,
        None,
    )


def test_a_clinic_quiet_by_day_is_checked_found_unchanged_and_not_paged(
    scenario: Scenario, pagerduty: PagerDuty
) -> None:
    """Daytime: silence is suspicious, so a reconcile is asked for; it finds nothing changed, the feed is
    recorded genuinely quiet (and checked again a window later), and nobody is paged."""
    _quiet_clinic(scenario, pagerduty, timezone=_local_zone(hour=12))

    def checked_twice() -> bool:
        outcomes = scenario.sql("SELECT outcome FROM feed_checks ORDER BY id")
        return [o.outcome for o in outcomes][:2] == ["quiet", "quiet"]  # the first, then the check again

    try:
        wait_until(checked_twice, timeout=30, what="two quiet checks decided genuinely quiet")
    except TimeoutError:
        raise AssertionError(
            (
                scenario.sql("SELECT * FROM feed_checks"),
                scenario.sql("SELECT * FROM reconcile_runs"),
                _feeds_json(scenario),
            )
        ) from None

    assert pagerduty.sink.received == []
    assert scenario.sql("SELECT kind FROM alerts") == []
    runs = scenario.sql(
        "SELECT outcome, recovered FROM reconcile_runs WHERE id IN (SELECT run_id FROM feed_checks)"
    )
    assert {(r.outcome, r.recovered) for r in runs} == {("complete", 0)}
    [facility] = _feeds_json(scenario)["facilities"]
    [source] = facility["sources"]
    assert source["quiet_check"]["reason"] == "below_expected"
    assert source["quiet_check"]["outcome"] in {"quiet", None}  # decided, or the next one asked for

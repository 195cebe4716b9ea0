"""Alerting under faults, end to end: ehrsim over HTTP, the receiver, Celery workers and beat, Postgres,
Redis, and local fake PagerDuty and Slack servers over real HTTP (``tests.app.alerts.fake_sinks``).

- a feed dropping 30 % of its notifications pages one ``feed_leaking`` alert carrying the count the
  reconciler's coverage table recorded, and every change reaches Postgres;
- revoked credentials page ``token_failing``, and the token endpoint is not asked again and again while
  drains and reconcile runs keep needing a token;
- a sink answering 500 (and another that hangs) gets the page later, once; the sink that never recovers
  is itself reported; the drains meanwhile are as fast as without the fault.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.ehr.auth import REFUSAL_BACKOFF_S
from devstack.ledger import LedgerReport
from devstack.processes import wait_until
from devstack.scenario import Scenario
from tests.app.alerts.fake_sinks import FakeSink, fake_sink

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
TYPES = ["Patient", "Observation", "Condition"]
PD_KEY_ENV = "EHRI_TEST_PD_ROUTING_KEY"
SLACK_URL_ENV = "EHRI_TEST_SLACK_URL"
#: Every beat schedule short: a sweep, a reconcile tick and an alert cycle every second or so.
ENV = {
    "EHRI_RECONCILE_TICK": "PT0.5S",
    "EHRI_ALERT_EVALUATE_INTERVAL": "PT1S",
    "EHRI_ALERT_RESOLVE_DELAY": "PT0S",
}


# -- helpers ---------------------------------------------------------------------------------------------


def _sinks_env(workdir: Path, pagerduty: FakeSink, slack_url: str | None = None) -> dict[str, str]:
    """The global sinks file (on-call PagerDuty, and Slack when given) and the settings naming it."""
    sinks: list[dict[str, Any]] = [
        {
            "name": "oncall",
            "type": "pagerduty",
            "routing_key": {"env": PD_KEY_ENV},
            "url": f"{pagerduty.url}/v2/enqueue",
            "min_severity": "warning",
            "timeout_s": 2,
        }
    ]
    env = {PD_KEY_ENV: "pd-routing-key-0123456789abcdef"}
    if slack_url is not None:
        sinks.append(
            {
                "name": "chat",
                "type": "slack",
                "webhook_url": {"env": SLACK_URL_ENV},
                "min_severity": "warning",
                "timeout_s": 1,
            }
        )
        env[SLACK_URL_ENV] = slack_url
    path = workdir / "sinks.yaml"
    path.write_text(yaml.safe_dump({"sinks": sinks}))
    return {**env, "EHRI_ALERT_SINKS_FILE": str(path)}


def _configure(scenario: Scenario, *, reconcile: dict[str, Any], feed_health: dict[str, Any]) -> None:
    """The facility's ``reconcile`` and ``feed_health`` blocks, as ``facilities apply`` stores them."""
    scenario.sql(
        "UPDATE facilities SET reconcile = CAST(:r AS jsonb), feed_health = CAST(:h AS jsonb),"
        " updated_at = now() WHERE id = :f",
        r=json.dumps({"types": TYPES, **reconcile}),
        h=json.dumps(feed_health),
        f=FACILITY,
    )


def _admin(scenario: Scenario, path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"{scenario.sim_url}/_admin/{FACILITY}/{path}"
    response = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=30)
    response.raise_for_status()
    return response.json()


def _count(scenario: Scenario, statement: str, **params: Any) -> int:
    return int(scenario.sql(statement, f=FACILITY, **params)[0][0] or 0)


def _triggers(pagerduty: FakeSink, kind: str | None = None) -> list[dict[str, Any]]:
    """PagerDuty triggers it accepted (of alert ``kind``), in arrival order."""
    events = [r.json() for r in pagerduty.accepted()]
    return [
        e
        for e in events
        if e["event_action"] == "trigger" and (kind is None or e["payload"]["class"] == kind)
    ]


def _request_reconcile(scenario: Scenario) -> int:
    """Ask for a run now, as a notification without a focus or a quiet check does; the run's id."""
    row = scenario.sql(
        "INSERT INTO reconcile_runs (facility_id, trigger, outcome) VALUES (:f, 'test', 'requested')"
        " RETURNING id",
        f=FACILITY,
    )
    return int(row[0][0])


def _reconciled_after(scenario: Scenario, run_id: int) -> bool:
    """A run later than request ``run_id`` completed (the request row is taken up by the run)."""
    return (
        _count(
            scenario,
            "SELECT count(*) FROM reconcile_runs"
            " WHERE facility_id = :f AND id >= :id AND outcome = 'complete'",
            id=run_id,
        )
        > 0
    )


def _dead_letter(scenario: Scenario) -> None:
    """A dead-lettered inbox row (no resource behind it): the next alert cycle pages ``dead_letters``."""
    scenario.sql(
        "INSERT INTO inbox (facility_id, dedup_key, received_at, done_at, status, reason, attempts,"
        " focus_type, focus_id) VALUES (:f, 'alert-probe', now(), now(), 'dead', 'ehr_http_4xx', 1,"
        " 'Patient', 'alert-probe')",
        f=FACILITY,
    )


def _gaps_handled(scenario: Scenario) -> bool:
    return _count(scenario, "SELECT count(*) FROM subscription_gaps WHERE handled_at IS NULL") == 0


def _unknowable(scenario: Scenario, report: LedgerReport) -> set[str]:
    """Resources created and deleted before any search could see them, whose every notification was
    dropped: no one can know they existed, so their absence is no loss."""
    notified = {
        f"{r.focus_type}/{r.focus_id}"
        for r in scenario.sql("SELECT focus_type, focus_id FROM inbox WHERE facility_id = :f", f=FACILITY)
    }
    deleted = {f"{r['resourceType']}/{r['id']}" for r in scenario.truth(FACILITY) if r["deleted"]}
    return {label for label in report.missing if label in deleted and label not in notified}


def _wait_for_ledger(scenario: Scenario, *, timeout: float) -> LedgerReport:
    """``Scenario.wait_for_ledger``, the unknowable resources (``_unknowable``) apart: the report once
    nothing is pending and every other change is in Postgres, or at ``timeout``."""
    reports: list[LedgerReport] = []

    def settled() -> bool:
        report = scenario.ledger(FACILITY)
        report.undelivered = scenario.sender_counters(FACILITY)["pending"]
        reports.append(report)
        return report.drained and report.unmatched == len(_unknowable(scenario, report))

    with suppress(TimeoutError):  # the caller's assertions say what is missing
        wait_until(settled, timeout=timeout, interval=0.25, what="the ledger")
    return reports[-1]


@contextmanager
def _hanging_sink() -> Iterator[str]:
    """A URL whose server accepts connections and never answers (a sink that hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/services/T000/B000/hang"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


# -- 1. a leaking feed -----------------------------------------------------------------------------------


def test_a_feed_dropping_30_percent_pages_one_leak_alert_carrying_the_recovered_count(
    scenario: Scenario,
) -> None:
    """The alert cycle runs only once the reconcile that recovers the dropped changes has committed, so
    the count in the page is exactly what the coverage table holds; changes keep coming (and leaking)
    afterwards, another reconcile recovers more, and nothing is paged again."""
    reconcile = {"interval": "PT1H", "recrawl_interval": "PT1S"}  # the first run now, then on request
    feed_health = {"leak_min": 3, "leak_window": "PT1H", "leak_settle": "PT1S"}
    _configure(scenario, reconcile=reconcile, feed_health=feed_health)
    with fake_sink("pagerduty") as pagerduty:
        env = {**ENV, "EHRI_EVENT_GAP_GRACE": "PT1S", **_sinks_env(scenario.workdir, pagerduty)}
        stack = scenario.start(workers=0, beat=True, env=env)
        stack.start_worker("ingest", 2, queues=("ingest", "periodic", "reconcile"))
        wait_until(
            lambda: _count(scenario, "SELECT count(*) FROM reconcile_runs WHERE outcome = 'complete'") > 0,
            timeout=30,
            what="the first reconcile (of an empty EHR)",
        )
        _admin(scenario, "faults", {"drop_rate": 0.3})

        def drained() -> bool:
            return scenario.sender_counters(FACILITY)["pending"] == 0 and scenario.ledger(FACILITY).drained

        for _ in range(4):  # changes keep coming, each burst with its notifications (70 % of them)
            scenario.make_changes(FACILITY, 40)
            wait_until(drained, timeout=60, what="every delivered notification drained")
        assert scenario.sender_counters(FACILITY)["dropped"] > 0
        # Every recovery made before the count: the gap pass's ($events, after its grace), then a run
        # (its re-crawl finds the deletions no search by _lastUpdated shows).
        wait_until(lambda: _gaps_handled(scenario), timeout=30, what="the gap pass")
        run = _request_reconcile(scenario)
        wait_until(lambda: _reconciled_after(scenario, run), timeout=30, what="the reconcile")
        recovered = _count(scenario, "SELECT count(*) FROM reconcile_recovered WHERE facility_id = :f")
        assert recovered >= 3, "30 % dropped over 160 changes: some only the reconciler found"
        assert pagerduty.received == []  # no alert cycle ran yet

        stack.start_worker("alerts", 1, queues=("alerts",))
        wait_until(lambda: bool(_triggers(pagerduty, "feed_leaking")), timeout=30, what="the leak page")
        page = _triggers(pagerduty, "feed_leaking")[0]
        assert page["payload"]["custom_details"]["details"]["recovered"] == recovered
        assert page["payload"]["component"] == "facility"

        # The feed keeps leaking: more changes, more drops, another reconcile recovers more.
        scenario.make_changes(FACILITY, 40)
        wait_until(drained, timeout=60, what="the next burst drained")
        wait_until(lambda: _gaps_handled(scenario), timeout=30, what="the gap pass")
        run = _request_reconcile(scenario)
        wait_until(lambda: _reconciled_after(scenario, run), timeout=30, what="the second reconcile")
        total = _count(scenario, "SELECT count(*) FROM reconcile_recovered WHERE facility_id = :f")

        def alert_refreshed() -> bool:  # a cycle has seen the second reconcile's count
            held = scenario.sql(
                "SELECT details->>'recovered' FROM alerts WHERE facility_id = :f AND kind = 'feed_leaking'",
                f=FACILITY,
            )
            return len(held) == 1 and int(held[0][0]) == total

        wait_until(alert_refreshed, timeout=30, what="the alert holding the new count")
        assert len(_triggers(pagerduty, "feed_leaking")) == 1  # held, not paged again
        assert _count(scenario, "SELECT count(*) FROM alerts WHERE kind = 'feed_leaking'") == 1

    report = _wait_for_ledger(scenario, timeout=30)
    assert report.drained
    assert report.unmatched == len(_unknowable(scenario, report)), (
        report.missing,
        report.behind,
        report.not_tombstoned,
    )
    print(f"\nleak page: recovered {recovered} (coverage table), then {total}; lost 0")


# -- 2. revoked credentials ------------------------------------------------------------------------------

#: How long drains and reconcile runs keep wanting a token after the revocation.
REVOKED_WINDOW_S = 15.0


def test_revoked_credentials_page_token_failing_and_do_not_loop_on_the_token_endpoint(
    scenario: Scenario,
) -> None:
    """The token endpoint answers 401 ``invalid_client``: the refusal is recorded, ``token_failing`` is
    paged once, and over a window in which notifications keep being drained and a reconcile is due
    every second, the token endpoint is asked a handful of times, not once per fetch or run."""
    _configure(scenario, reconcile={"interval": "PT1S"}, feed_health={})
    with fake_sink("pagerduty") as pagerduty:
        env = {**ENV, **_sinks_env(scenario.workdir, pagerduty)}
        scenario.start(workers=1, concurrency=2, beat=True, env=env)
        scenario.make_changes(FACILITY, 5)
        report = scenario.wait_for_ledger(FACILITY, timeout=30)
        assert report.ok, (report.missing, report.behind, report.inbox)  # a token was issued and used

        _admin(scenario, "faults", {"credentials_revoked": True})
        revoked_at = time.time()  # ehrsim's request log is on the wall clock

        def terminal() -> bool:
            return scenario.sender_counters(FACILITY)["pending"] == 0 and scenario.ledger(FACILITY).drained

        bursts = 0
        while time.time() < revoked_at + REVOKED_WINDOW_S:  # paced by the drains, not by sleeping
            scenario.make_changes(FACILITY, 3)
            wait_until(terminal, timeout=30, what="the burst's notifications handled")
            bursts += 1
        wait_until(
            lambda: bool(_triggers(pagerduty, "token_failing")), timeout=30, what="the token_failing page"
        )
        window_end = time.time()

        token_requests = [r for r in _admin(scenario, "requests")["token"] if r["at"] >= revoked_at]
        runs = _count(
            scenario,
            "SELECT count(*) FROM reconcile_runs WHERE facility_id = :f AND started_at >= to_timestamp(:t)",
            t=revoked_at,
        )
        dead = _count(
            scenario,
            "SELECT count(*) FROM inbox WHERE facility_id = :f AND status = 'dead'"
            " AND reason = 'ehr_auth_rejected'",
        )
        page = _triggers(pagerduty, "token_failing")
        print(
            f"\nrevoked for {window_end - revoked_at:.1f} s: {bursts} bursts, {dead} dead letters,"
            f" {runs} reconcile runs, {len(token_requests)} token requests"
        )
        assert bursts >= 10, "the window saw many drains"
        assert dead >= 10
        assert runs >= 5, "the window saw many reconcile runs"
        assert all(r["fault"] == 401 for r in token_requests)
        # Once, then not before the back-off (60 s, longer than the window) ran out.
        assert len(token_requests) == 1 + int((window_end - revoked_at) // REFUSAL_BACKOFF_S), token_requests
        assert len(page) == 1
        assert page[0]["payload"]["severity"] == "critical"


# -- 3. a sink down --------------------------------------------------------------------------------------

CHANGES = 100


def _time_to_ledger(scenario: Scenario, changes: int = CHANGES) -> float:
    """Seconds from ``changes`` changes at the EHR to every one of them in Postgres."""
    started = time.monotonic()
    scenario.make_changes(FACILITY, changes)
    report = scenario.wait_for_ledger(FACILITY, timeout=60)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)
    return time.monotonic() - started


def test_a_sink_answering_500_gets_the_page_later_once_and_ingestion_keeps_its_pace(
    scenario: Scenario,
) -> None:
    """PagerDuty answers 500 five times, Slack hangs (accepts, never answers) throughout. Workers as in
    production: drains on one node, reconcile and alerts on another. The page reaches PagerDuty on the
    sixth attempt, once; Slack, failing for good, is reported to PagerDuty as ``sink_failing``; and
    changes made while the alerts worker keeps retrying reach Postgres as fast as without the fault."""
    _configure(scenario, reconcile={"interval": "PT1H"}, feed_health={})
    with fake_sink("pagerduty") as pagerduty, _hanging_sink() as slack_url:
        env = {
            **ENV,
            **_sinks_env(scenario.workdir, pagerduty, slack_url),
            "EHRI_ALERT_RETRY_BASE": "PT0.5S",
            "EHRI_ALERT_RETRY_CAP": "PT1S",
            "EHRI_ALERT_DELIVERY_MAX_ATTEMPTS": "7",
        }
        stack = scenario.start(workers=0, beat=True, env=env)
        stack.start_worker("ingest", 2, queues=("ingest", "periodic"))
        stack.start_worker("reconcile", 2, queues=("reconcile", "alerts"))
        # The first reconcile (of an empty EHR) done before any change: a run racing notifications still
        # on their way counts what it stores first as recovered, and this test is not about leaks.
        wait_until(lambda: _reconciled_after(scenario, 0), timeout=30, what="the first reconcile")
        _time_to_ledger(scenario, 10)  # warm: the token, the connections, the first reconcile
        baseline = _time_to_ledger(scenario)

        pagerduty.fail(5, 500)
        _dead_letter(scenario)  # stands in for any alert: the sinks are what is under test
        wait_until(lambda: bool(pagerduty.received), timeout=30, what="the first (refused) page")
        faulted = _time_to_ledger(scenario)
        refused_meanwhile = len(pagerduty.received) - len(pagerduty.accepted())
        assert not pagerduty.accepted(), "every change was in Postgres while the page was still refused"

        wait_until(lambda: bool(_triggers(pagerduty, "dead_letters")), timeout=30, what="the page")
        wait_until(
            lambda: bool(_triggers(pagerduty, "sink_failing")), timeout=30, what="Slack reported failing"
        )
        deliveries = scenario.sql(
            "SELECT d.sink, d.state, d.attempts, d.last_error FROM alert_deliveries d"
            " JOIN alerts a ON a.id = d.alert_id WHERE a.kind = 'dead_letters' ORDER BY d.sink"
        )

    print(
        f"\n{CHANGES} changes to Postgres: {baseline:.2f} s with healthy sinks, {faulted:.2f} s while"
        f" PagerDuty answered 500 and Slack hung ({refused_meanwhile} refused sends meanwhile)"
    )
    [page] = _triggers(pagerduty, "dead_letters")
    dedup_key = page["dedup_key"]
    sends = [r for r in pagerduty.received if r.json()["dedup_key"] == dedup_key]
    assert [r.headers["x-fake-status"] for r in sends] == ["500"] * 5 + ["202"]  # retried, once
    assert [(d.sink, d.state, d.attempts) for d in deliveries] == [
        ("chat", "failed", 7),
        ("oncall", "sent", 6),
    ]
    assert deliveries[0].last_error == "sink_transport"  # the hang, timed out
    [failing] = _triggers(pagerduty, "sink_failing")
    assert failing["payload"]["component"] == "sink:chat"
    assert failing["payload"]["custom_details"]["details"]["reason"] == "sink_transport"
    assert refused_meanwhile >= 1, "the changes were made while the page was being refused"
    assert faulted <= 2 * baseline + 3, (baseline, faulted)


# -- 4. late, not lost -----------------------------------------------------------------------------------

SETTLE_S = 5


def test_notifications_arriving_after_a_reconcile_stored_their_change_page_no_leak(
    scenario: Scenario,
) -> None:
    """Every notification is held 3 s at the EHR (a slow interface engine); a reconcile run in that time
    stores the changes first. The notifications then arrive for the very versions it stored: the feed
    delivered every change, late, so nothing counts as recovered and nothing is paged, however many
    alert cycles run once the recoveries settled (``leak_settle``)."""
    feed_health = {"leak_min": 3, "leak_window": "PT1H", "leak_settle": f"PT{SETTLE_S}S"}
    _configure(scenario, reconcile={"interval": "PT1H"}, feed_health=feed_health)
    with fake_sink("pagerduty") as pagerduty:
        env = {**ENV, **_sinks_env(scenario.workdir, pagerduty)}
        scenario.start(workers=1, concurrency=2, beat=True, env=env)
        wait_until(lambda: _reconciled_after(scenario, 0), timeout=30, what="the first reconcile")
        _admin(scenario, "faults", {"delay_s": 3.0})
        scenario.make_changes(FACILITY, 30)
        run = _request_reconcile(scenario)
        wait_until(lambda: _reconciled_after(scenario, run), timeout=30, what="the reconcile")
        stored_first = _count(scenario, "SELECT recovered FROM reconcile_runs WHERE id > :id", id=run)
        reconciled = time.monotonic()
        report = scenario.wait_for_ledger(FACILITY, timeout=30)
        assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)
        assert scenario.sender_counters(FACILITY)["dropped"] == 0

        # The clock must pass the settle time (that is the rule under test); then a dead letter, paged by
        # the next cycle, proves a cycle judged the facility with the run's recoveries settled.
        wait_until(lambda: time.monotonic() > reconciled + SETTLE_S, timeout=30, what="the settle time")
        _dead_letter(scenario)
        wait_until(lambda: bool(_triggers(pagerduty, "dead_letters")), timeout=30, what="a later cycle")
        print(f"\nthe reconcile stored {stored_first} changes before their notifications arrived")
        assert stored_first >= 3, "the run came first for some changes"
        assert _count(scenario, "SELECT count(*) FROM reconcile_recovered WHERE facility_id = :f") == 0
        assert _triggers(pagerduty, "feed_leaking") == []

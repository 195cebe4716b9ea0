"""End to end with real processes: ehrsim over HTTP → receiver (uvicorn) → Redis → celery worker
(prefork) → Postgres, then the ledger check against ehrsim's ground truth."""

from __future__ import annotations

import pytest

from devstack.scenario import Scenario

pytestmark = pytest.mark.e2e


def test_every_change_reaches_current_resources_at_its_latest_version(scenario: Scenario) -> None:
    scenario.start(workers=1, concurrency=2, beat=False)
    scenario.make_changes("fac-e2e", 200)

    report = scenario.wait_for_ledger("fac-e2e", timeout=90)

    assert report.expected > 0
    assert (report.missing, report.behind, report.not_tombstoned) == ([], [], [])
    assert report.inbox.get("pending", 0) == 0
    assert report.inbox.get("dead", 0) == 0
    assert scenario.sender_counters("fac-e2e")["dropped"] == 0


def test_work_committed_while_no_worker_runs_is_drained_by_the_sweeper(scenario: Scenario) -> None:
    """Redis is only the doorbell: wipe every queued message, and beat's sweeper re-enqueues from Postgres."""
    from devstack.database import clear_redis_prefix

    stack = scenario.start(workers=0, beat=False)
    scenario.make_changes("fac-e2e", 50)
    from devstack.processes import wait_until

    wait_until(lambda: scenario.sender_counters("fac-e2e")["pending"] == 0, timeout=60, what="notifications")
    assert scenario.ledger("fac-e2e").inbox.get("pending", 0) > 0
    clear_redis_prefix(scenario.redis_url, scenario.redis_prefix)  # the doorbells are gone
    stack.start_worker("worker0", 2)
    stack.start_beat()

    report = scenario.wait_for_ledger("fac-e2e", timeout=90)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)


def _converge_under(scenario: Scenario, faults: dict[str, object]) -> None:
    """150 changes sent with the sender faults ``faults``: every one reaches Postgres."""
    import httpx

    scenario.start(workers=1, concurrency=2, beat=False)
    httpx.post(f"{scenario.sim_url}/_admin/fac-e2e/faults", json=faults, timeout=10).raise_for_status()
    scenario.make_changes("fac-e2e", 150)
    report = scenario.wait_for_ledger("fac-e2e", timeout=90)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)


def test_duplicated_and_reordered_notifications_converge_without_duplicate_rows(scenario: Scenario) -> None:
    from sqlalchemy import create_engine, text

    _converge_under(scenario, {"duplicate_rate": 0.5, "delay_s": 0.3, "reorder": True})
    sent = scenario.sender_counters("fac-e2e")
    assert sent["duplicated"] > 0
    engine = create_engine(scenario.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*), count(DISTINCT event_number) FROM inbox")).one()
            views = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM observations),"
                    " (SELECT count(*) FROM conditions)"
                )
            ).one()
    finally:
        engine.dispose()
    assert rows[0] == rows[1] == sent["delivered"]  # one inbox row per event, duplicates answered, not stored
    live = [r for r in scenario.truth("fac-e2e") if not r["deleted"]]
    expected = tuple(
        sum(1 for r in live if r["resourceType"] == t) for t in ("Patient", "Observation", "Condition")
    )
    assert tuple(views) == expected


def test_the_real_receiver_commits_through_its_ledger_cache(scenario: Scenario) -> None:
    """The uvicorn receiver's group commit takes the one-round-trip path for the subscription it wrote
    last (``ehri_commit_ledger_cache_total``), and under duplicates and reordering the ledger it keeps
    that way ends exact: every event number seen, no gap left open, one epoch."""
    from tests.e2e.scrape import scrape, total

    _converge_under(scenario, {"duplicate_rate": 0.3, "delay_s": 0.2, "reorder": True})
    samples = scrape(scenario.receiver_port)
    assert total(samples, "ehri_commit_ledger_cache_total", result="hit") > 0
    events = scenario.sql(
        "SELECT max(event_number) AS top, count(*) AS n FROM inbox WHERE event_number IS NOT NULL"
    )
    ledger = scenario.sql(
        "SELECT highest_event, missing, epoch FROM subscription_ledger WHERE facility_id = 'fac-e2e'"
        " AND highest_event IS NOT NULL"
    )
    assert len(ledger) == 1
    assert ledger[0].highest_event == events[0].top == events[0].n  # numbers 1..n, each stored once
    assert ledger[0].missing == []
    assert ledger[0].epoch == 1

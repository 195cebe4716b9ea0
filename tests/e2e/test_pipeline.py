"""End to end with real processes: ehrsim over HTTP → receiver (uvicorn) → Redis → celery worker
(prefork) → Postgres, then the ledger check against ehrsim's ground truth."""

from __future__ import annotations

import pytest

from app.devstack.scenario import Scenario

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
    from app.devstack.database import clear_redis_prefix

    stack = scenario.start(workers=0, beat=False)
    scenario.make_changes("fac-e2e", 50)
    from app.devstack.processes import wait_until

    wait_until(lambda: scenario.sender_counters("fac-e2e")["pending"] == 0, timeout=60, what="notifications")
    assert scenario.ledger("fac-e2e").inbox.get("pending", 0) > 0
    clear_redis_prefix(scenario.redis_url, scenario.redis_prefix)  # the doorbells are gone
    stack.start_worker("worker0", 2)
    stack.start_beat()

    report = scenario.wait_for_ledger("fac-e2e", timeout=90)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)

"""The worker's metrics, served by the celery parent for every pool process (prometheus multiprocess)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from devstack.processes import free_port, wait_until
from devstack.scenario import Scenario
from tests.e2e.scrape import reachable, scrape, total

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
LABELS = {"facility", "outcome", "reason", "status", "le"}


def _done_rows(scenario: Scenario) -> int:
    engine = create_engine(scenario.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM inbox WHERE status = 'done'")).scalar_one())
    finally:
        engine.dispose()


def test_worker_parent_serves_the_metrics_of_every_pool_process(scenario: Scenario) -> None:
    port = free_port()
    stack = scenario.start(workers=0, beat=False)
    stack.start_worker("worker0", 2, metrics_port=port)
    scenario.make_changes(FACILITY, 30)
    report = scenario.wait_for_ledger(FACILITY, timeout=90)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)
    wait_until(lambda: reachable(port), timeout=20, what="the worker's metrics endpoint")

    samples = scrape(port)

    done = total(samples, "ehri_inbox_rows_total", facility=FACILITY, outcome="done")
    print(f"\nehri_inbox_rows_total{{outcome=done}} served by the worker: {done:.0f}")
    assert done == _done_rows(scenario) > 0  # every process's rows, counted once
    for name in (
        "ehri_drain_seconds_count",
        "ehri_drain_batch_seconds_count",
        "ehri_ehr_request_seconds_count",
    ):
        assert total(samples, name, facility=FACILITY) > 0, name
    worker_samples = [
        labels for name, rows in samples.items() if name.startswith("ehri_") for labels, _ in rows
    ]
    assert all(set(labels) <= LABELS for labels in worker_samples)  # ids and slugs only

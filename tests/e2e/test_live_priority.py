"""A backfill never starves the live feed (real processes: ehrsim, receiver, a live worker node on
``ingest,periodic`` and a reconcile worker node on ``reconcile``, as docker-compose.yml deploys them).

While a slow, large backfill of a facility runs, notifications for the same facility arrive: their
fetches complete within seconds, while the backfill goes on for much longer. They are not queued behind
it, neither in Celery (reconcile runs have their own queue and worker) nor in the facility's politeness
budget (the backfill's reads yield to notification fetches)."""

from __future__ import annotations

import json

import httpx
import pytest

from app.queue import enqueue_reconcile, make_celery
from app.settings import Settings
from devstack.processes import wait_until
from devstack.scenario import Scenario
from tests.e2e.conftest import MakeScenario

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
PATIENTS = 400  # ~2,000 resources of the three types below, and their history: ~45 pages of 100
PAGE_S = 0.6  # every FHIR response takes this long (ehrsim's slow_s): the backfill takes ~30 s
LIMITS = {"requests_per_second": 10, "burst": 4, "concurrency": 2}
NOTIFIED = 6
BOUND_S = 8.0


def _start_backfill(scenario: Scenario) -> None:
    env = scenario.env()
    settings = Settings(
        redis_url=scenario.redis_url, redis_prefix=scenario.redis_prefix, queue=env["EHRI_QUEUE"]
    )
    celery = make_celery(settings)
    try:
        enqueue_reconcile(celery, settings.reconcile_queue, FACILITY, trigger="backfill")
    finally:
        celery.close()


def test_notification_fetches_complete_while_a_long_backfill_of_the_facility_runs(
    make_scenario: MakeScenario,
) -> None:
    scenario = make_scenario(limits=LIMITS, patients=PATIENTS)  # the seed predates the subscription
    scenario.sql(
        "UPDATE facilities SET reconcile = CAST(:r AS jsonb), updated_at = now() WHERE id = :f",
        r=json.dumps({"interval": "PT1H", "types": ["Patient", "Observation", "Condition"]}),
        f=FACILITY,
    )
    stack = scenario.start(workers=0, beat=False)
    stack.start_worker(
        "live", 1, queues=("ingest", "periodic")
    )  # one process: a backfill here would block it
    stack.start_worker("reconcile", 1, queues=("reconcile",))
    httpx.post(
        f"{scenario.sim_url}/_admin/{FACILITY}/faults", json={"slow_s": PAGE_S}, timeout=10
    ).raise_for_status()
    _start_backfill(scenario)

    def stored() -> int:
        return int(scenario.sql("SELECT count(*) FROM resources WHERE facility_id = :f", f=FACILITY)[0][0])

    wait_until(lambda: stored() > 0, timeout=60, what="the backfill's first committed page")
    scenario.make_changes(FACILITY, NOTIFIED)

    def drained() -> bool:
        inbox = scenario.ledger(FACILITY).inbox
        return sum(inbox.values()) >= NOTIFIED and inbox.get("pending", 0) == 0

    wait_until(drained, timeout=60, what="the notifications' fetches")
    rows = scenario.sql(
        "SELECT status, extract(epoch FROM done_at - received_at) AS latency, done_at FROM inbox"
        " WHERE facility_id = :f",
        f=FACILITY,
    )
    assert {r.status for r in rows} == {"done"}
    latencies = sorted(float(r.latency) for r in rows)
    last_done = max(r.done_at for r in rows)
    wait_until(
        lambda: bool(scenario.sql("SELECT 1 FROM reconcile_runs WHERE finished_at IS NOT NULL")),
        timeout=240,
        what="the backfill's end",
    )
    run = scenario.sql(
        "SELECT outcome, pages, started_at, finished_at, extract(epoch FROM finished_at - started_at) AS took"
        " FROM reconcile_runs WHERE facility_id = :f AND trigger = 'backfill'",
        f=FACILITY,
    )[0]
    print(
        f"\nbackfill: {run.pages} pages in {float(run.took):.1f}s ({run.outcome});"
        f" {len(rows)} notification fetches during it, latency (received → stored) s:"
        f" {[round(x, 2) for x in latencies]}, max {latencies[-1]:.2f}"
    )
    assert run.outcome == "complete"
    assert run.finished_at > last_done  # every notification was done while the backfill still ran
    assert latencies[-1] < BOUND_S
    assert latencies[-1] < float(run.took) / 3

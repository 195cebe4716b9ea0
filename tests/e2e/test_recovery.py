"""Recovery in seconds, not a lease: a worker killed with SIGKILL mid-batch gives its rows back within one
short lease (renewed while a batch is in flight), and the sweeper hands them to another worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from devstack.processes import wait_until
from devstack.scenario import Scenario, scenario_for
from tests.conftest import REDIS_URL
from tests.e2e import private_postgres
from tests.e2e.private_postgres import PrivateCluster

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
RECOVERY_BOUND_S = 60


def _rows(scenario: Scenario, where: str) -> set[int]:
    engine = create_engine(scenario.database_url)
    try:
        with engine.connect() as conn:
            return {int(i) for i in conn.execute(text(f"SELECT id FROM inbox WHERE {where}")).scalars()}
    finally:
        engine.dispose()


def _in_flight(scenario: Scenario) -> set[int]:
    return _rows(scenario, "status = 'pending' AND lease_until > now()")


def _faults(scenario: Scenario, body: dict[str, object]) -> None:
    httpx.post(f"{scenario.sim_url}/_admin/{FACILITY}/faults", json=body, timeout=10).raise_for_status()


def test_rows_of_a_worker_killed_mid_batch_are_done_by_another_within_seconds(scenario: Scenario) -> None:
    stack = scenario.start(workers=0, beat=True)  # beat's sweeper re-rings every 2 s in scenarios
    _faults(scenario, {"slow_s": 3})  # every EHR answer takes 3 s: the worker dies with a batch in flight
    victim = stack.start_worker("victim", 1)
    scenario.make_changes(FACILITY, 20)
    wait_until(lambda: len(_in_flight(scenario)) > 0, timeout=60, what="a batch in flight")
    claimed = _in_flight(scenario)

    victim.kill()  # SIGKILL to the node's process group: the parent and its pool process
    killed = time.monotonic()
    _faults(scenario, {"slow_s": 0})
    stack.start_worker("rescuer", 1)
    wait_until(
        lambda: claimed <= _rows(scenario, "status = 'done'"),
        timeout=RECOVERY_BOUND_S,
        what="the killed worker's rows done by another",
    )
    recovery = time.monotonic() - killed

    print(f"\nrecovery after SIGKILL mid-batch: {len(claimed)} claimed rows done again {recovery:.1f}s later")
    assert recovery < RECOVERY_BOUND_S
    report = scenario.wait_for_ledger(FACILITY, timeout=60)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)


@pytest.fixture
def private_scenario(tmp_path: Path) -> Iterator[tuple[Scenario, PrivateCluster]]:
    """A scenario whose database lives in a Postgres cluster of its own, so the test may restart it."""
    reason = private_postgres.unavailable()
    if reason is not None:
        pytest.skip(reason)
    cluster = private_postgres.create_cluster()
    try:
        sc = scenario_for(tmp_path, base_database_url=cluster.url, redis_url=REDIS_URL, facilities=[FACILITY])
        sc.prepare()
        try:
            yield sc, cluster
        finally:
            tails = {p.name: p.log_tail(30) for p in (sc.stack.procs if sc.stack else [])}
            sc.teardown(drop=False)  # the cluster goes as a whole
            for name, tail in tails.items():
                print(f"--- {name}\n{tail}")
    finally:
        cluster.remove()


def test_rows_claimed_when_postgres_restarts_are_done_within_seconds(
    private_scenario: tuple[Scenario, PrivateCluster],
) -> None:
    scenario, cluster = private_scenario
    stack = scenario.start(workers=1, concurrency=2, beat=True)
    worker = next(p for p in stack.procs if p.name == "worker0")
    _faults(scenario, {"slow_s": 3})
    scenario.make_changes(FACILITY, 20)
    wait_until(lambda: len(_in_flight(scenario)) > 0, timeout=60, what="a batch in flight")
    claimed = _in_flight(scenario)

    started = time.monotonic()
    cluster.stop("immediate")  # a crash: every connection of the receiver and the workers is cut
    # Down until the batch has failed and could not even give its rows back (the case).
    wait_until(
        lambda: "ingest.release_failed" in worker.log_path.read_text(errors="replace"),
        timeout=60,
        what="the batch failing to give its rows back",
    )
    cluster.start()
    restarted = time.monotonic() - started
    _faults(scenario, {"slow_s": 0})
    wait_until(
        lambda: claimed <= _rows(scenario, "status = 'done'"),
        timeout=RECOVERY_BOUND_S,
        what="the rows claimed at the restart done",
    )
    recovery = time.monotonic() - started

    print(
        f"\nrecovery after a Postgres restart ({restarted:.1f}s down) mid-batch: {len(claimed)} claimed rows"
        f" done {recovery:.1f}s after it began"
    )
    assert recovery < RECOVERY_BOUND_S
    report = scenario.wait_for_ledger(FACILITY, timeout=90)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)

"""A lagging replica does not make us miss the newer version (real processes: ehrsim with its
``replica_lag_s`` fault, receiver, worker, beat).

Every notification announces its event's time; reads right after the change are answered by a replica
seconds behind (the older version, the live body of a resource deleted since, or 404 for one created
since). The drain stores what it read but keeps the event open (``older_than_notified``) and reads
again after its back-off: in the end Postgres holds every change at the EHR's version."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from devstack.processes import wait_until
from devstack.scenario import Scenario
from tests.e2e.conftest import MakeScenario

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
LAG_S = 2.5
# A first retry comes 3-6 s later (full jitter in [0.5, 1] of the step): past the lag, so a 404 for a
# resource created since is read again once the replica has it (two 404s would be a deletion).
ENV = {"EHRI_RETRY_BASE": "PT6S"}


def _faults(scenario: Scenario, body: dict[str, object] | None = None) -> dict[str, object]:
    url = f"{scenario.sim_url}/_admin/{FACILITY}/faults"
    response = httpx.post(url, json=body, timeout=10) if body is not None else httpx.get(url, timeout=10)
    response.raise_for_status()
    state: dict[str, object] = response.json()
    return state


def test_reads_answered_by_a_lagging_replica_are_read_again_until_the_notified_version_is_stored(
    make_scenario: MakeScenario,
) -> None:
    scenario = make_scenario(patients=15)  # what the changes update and delete
    stack = scenario.start(workers=1, concurrency=2, beat=True, env=ENV)
    # Warm-up changes, fetched without lag: the worker is up, so the lagged changes below are read at once.
    scenario.make_changes(FACILITY, 3)
    assert scenario.wait_for_ledger(FACILITY, timeout=60).ok
    latest = max(datetime.fromisoformat(r["lastUpdated"]).timestamp() for r in scenario.truth(FACILITY))
    # What the changes update must be older than the lag, or a lagging read would answer 404 rather than
    # an older version (waiting for the clock, not for another process).
    wait_until(lambda: time.time() - latest > LAG_S + 1, timeout=30, what="versions older than the lag")
    _faults(scenario, {"replica_lag_s": LAG_S})
    scenario.make_changes(FACILITY, 20)

    report = scenario.wait_for_ledger(FACILITY, timeout=120)
    applied = _faults(scenario)["applied"]
    assert isinstance(applied, dict)
    worker_log = next(p for p in stack.procs if p.name == "worker0").log_path.read_text(errors="replace")
    reread = worker_log.count('"ingest.fetch.older_than_notified"')
    print(
        f"\nlagging replica ({LAG_S}s): {applied.get('replica_lag', 0)} reads served behind;"
        f" {reread} events kept open as older than notified; ledger: {report.matched} matched,"
        f" behind {len(report.behind)}, missing {len(report.missing)},"
        f" not tombstoned {len(report.not_tombstoned)}, inbox {report.inbox}"
    )
    assert applied.get("replica_lag", 0) > 0
    assert reread > 0  # the fault was met, and the events stayed open
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)
    assert report.inbox.get("dead", 0) == 0

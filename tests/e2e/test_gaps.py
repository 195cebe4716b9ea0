"""The gap pass as the real processes run it: ehrsim drops one notification between two it delivers, the
receiver's ledger opens the gap, beat fans out ``reconcile.gaps_fan_out``, a worker's
``reconcile.check_gaps`` waits out the grace and fetches the missing event with ``$events``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.db.engine import make_engine, make_sessionmaker
from app.db.models import Facility
from app.ehr.pool import EHRClientPool
from app.reconcile.probe import probe_facility
from devstack.processes import wait_until
from devstack.scenario import Scenario
from tests.e2e.sql import scalar

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
LEDGER = f"SELECT highest_event FROM subscription_ledger WHERE subscription = 'Subscription/sub-{FACILITY}'"


def _admin(scenario: Scenario, path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"{scenario.sim_url}/_admin/{FACILITY}/{path}"
    response = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=30)
    response.raise_for_status()
    return response.json()


def _change_delivered(scenario: Scenario) -> None:
    highest = scalar(scenario, LEDGER) or 0
    _admin(scenario, "activity", {"changes": 1})
    wait_until(lambda: (scalar(scenario, LEDGER) or 0) > highest, timeout=30, what="the notification")


def test_beat_and_a_worker_recover_a_dropped_event_with_events(scenario: Scenario) -> None:
    scenario.start(workers=1, beat=True, env={"EHRI_EVENT_GAP_GRACE": "PT1S", "EHRI_RECONCILE_TICK": "PT1S"})
    engine = make_engine(scenario.database_url, pool_size=1)
    pool = EHRClientPool()
    try:
        with make_sessionmaker(engine).begin() as session:  # `facilities apply` probes: $events found
            facility = session.get(Facility, FACILITY)
            assert facility is not None
            outcome = probe_facility(session, facility, pool.get(facility), now=datetime.now(UTC))
            assert outcome.capabilities is not None
            assert outcome.capabilities.subscription_events
    finally:
        pool.close()
        engine.dispose()

    _change_delivered(scenario)
    _admin(scenario, "faults", {"drop_rate": 1.0})
    _admin(scenario, "activity", {"changes": 1})
    _admin(scenario, "faults", {"drop_rate": 0.0})
    number = _admin(scenario, "notifications/dropped")["event_numbers"][-1]
    _change_delivered(scenario)

    wait_until(
        lambda: (
            scalar(
                scenario,
                "SELECT state || ':' || recovered FROM subscription_gaps"
                f" WHERE kind = 'gap' AND first_event <= {number} AND last_event >= {number}",
            )
            == "recovered:1"
        ),
        timeout=60,
        what="the worker's gap pass recovering the event with $events",
    )
    report = scenario.wait_for_ledger(FACILITY, timeout=30)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)
    assert scalar(scenario, "SELECT count(*) FROM subscription_gaps WHERE handled_at IS NULL") == 0

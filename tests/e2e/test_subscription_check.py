"""The subscription check as the real processes run it: beat fans out ``reconcile.check_subscriptions``,
a worker checks the facility's subscription with its own EHR client, finds it forced to ``error`` in
ehrsim, records the window since its last good event and re-activates it (the real receiver answers the
handshake); the reconciler's next run covers that window and marks it consumed."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import yaml

from app.db.engine import make_engine, make_sessionmaker
from app.db.models import Facility
from app.ehr.pool import EHRClientPool
from app.reconcile.subscriptions import subscribe
from devstack.processes import wait_until
from devstack.scenario import Scenario
from tests.e2e.sql import scalar

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
SCOPES = ["system/*.read", "system/Subscription.cruds"]


def _allow_subscription_writes(scenario: Scenario) -> None:
    """The scenario registers read-only clients: let ours manage its Subscription (ehrsim and our YAML)."""
    path = scenario.workdir / "ehrsim.yaml"
    config = yaml.safe_load(path.read_text())
    for facility in config["facilities"]:
        facility["clients"][0]["scopes"] = SCOPES
    path.write_text(yaml.safe_dump(config))


def _status_at_ehr(scenario: Scenario, subscription_id: str) -> str | None:
    answer = httpx.get(f"{scenario.sim_url}/_admin/{FACILITY}/subscriptions", timeout=10).json()
    return next((s["status"] for s in answer["subscriptions"] if s["id"] == subscription_id), None)


def test_beat_and_a_worker_reactivate_a_subscription_in_error_and_record_its_window(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `ehr-ingest subscribe` runs here: it reads the webhook secret from the environment as the CLI would.
    monkeypatch.setenv("EHRI_DEMO_WEBHOOK_SECRET_0", scenario.webhook_secret(FACILITY))
    _allow_subscription_writes(scenario)
    scenario.start(
        workers=1, beat=True, env={"EHRI_SUBSCRIPTION_CHECK_INTERVAL": "PT1S", "EHRI_RECONCILE_TICK": "PT1S"}
    )
    engine = make_engine(scenario.database_url, pool_size=1)
    pool = EHRClientPool()
    try:
        with make_sessionmaker(engine).begin() as session:
            facility = session.get(Facility, FACILITY)
            assert facility is not None
            facility.auth = {**facility.auth, "scopes": SCOPES}
            facility.subscription = {
                "style": "backport-r4",
                "topic": "http://example.org/fhir/SubscriptionTopic/all-changes",
                "endpoint": f"{scenario.receiver_url}/hooks/{FACILITY}",
            }
            session.flush()
            subscribed = subscribe(session, facility, pool.get(facility), now=datetime.now(UTC))
    finally:
        pool.close()
        engine.dispose()
    sub_id = subscribed.subscription_id
    wait_until(lambda: _status_at_ehr(scenario, sub_id) == "active", timeout=30, what="the first handshake")
    handshake_at = scalar(
        scenario,
        f"SELECT last_handshake_at FROM subscription_ledger WHERE subscription LIKE '%Subscription/{sub_id}'",
    )
    assert handshake_at is not None

    httpx.post(
        f"{scenario.sim_url}/_admin/{FACILITY}/faults", json={"actions": ["subscription-error"]}, timeout=10
    ).raise_for_status()

    wait_until(
        lambda: scalar(scenario, "SELECT reactivations FROM facility_subscriptions") == 1,
        timeout=30,
        what="the worker's re-activation",
    )
    wait_until(lambda: _status_at_ehr(scenario, sub_id) == "active", timeout=30, what="the new handshake")
    since = scalar(scenario, "SELECT since FROM reconcile_requests WHERE reason = 'subscription_error'")
    assert since == handshake_at
    # the window makes the facility due: the reconciler's next run covers it and consumes it
    wait_until(
        lambda: (
            scalar(
                scenario,
                "SELECT consumed_at IS NOT NULL FROM reconcile_requests WHERE reason = 'subscription_error'",
            )
            is True
        ),
        timeout=60,
        what="the reconciler consuming the window",
    )
    assert (
        scalar(
            scenario,
            "SELECT count(*) FROM reconcile_runs r JOIN reconcile_requests q ON q.facility_id = r.facility_id"
            " WHERE r.outcome = 'complete' AND r.finished_at = q.consumed_at",
        )
        == 1
    )

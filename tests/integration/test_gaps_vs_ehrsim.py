"""Gaps and epochs against ehrsim over real HTTP: ehrsim's sender notifies the real receiver process, whose
ledger sees the event numbers; the gap pass (``app.reconcile.gaps.check_gaps``) runs here.

A dropped notification's event number is recovered with ``$events`` where the facility advertises it, and
by a window reconcile where it does not; a reordered event that arrives within the grace closes its gap
without counting as missed; an epoch reset (ehrsim restarts its counters) requests a reconcile since the
last good event; two passes at once handle a gap once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine, make_sessionmaker
from app.db.models import (
    Facility,
    InboxRow,
    ReconcileRequest,
    RecoveredChange,
    Resource,
    SubscriptionGap,
    SubscriptionLedger,
)
from app.ehr.pool import EHRClientPool
from app.reconcile.gaps import (
    CLAIM_LEASE,
    EPOCH,
    FILLED,
    GAP,
    RECOVERED,
    REQUESTED,
    GapReport,
    check_gaps,
    claim,
    finish,
)
from app.reconcile.probe import probe_facility
from app.reconcile.schedule import due_facilities
from app.reconcile.service import reconcile_facility
from app.settings import Settings
from devstack.processes import wait_until
from devstack.scenario import Scenario, scenario_for
from tests.conftest import BASE_DATABASE_URL, REDIS_URL
from tests.integration.conftest import Sim
from tests.integration.reconcile_world import Recording

WITH_EVENTS, WITHOUT_EVENTS, R5 = "gp-events", "gp-noevents", "gp-r5"
HOLD = Settings(event_gap_grace=timedelta(hours=1))  # a pass that only tracks and closes
DUE = Settings(event_gap_grace=timedelta(0))  # a pass that handles every open gap at once


@dataclass
class GapWorld:
    scenario: Scenario
    sessions: sessionmaker[Session]
    clients: EHRClientPool
    transport: Recording

    def admin(self, facility: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return Sim(self.scenario.sim_url, private_key="").admin(facility, path, body)

    def ledger(self, facility: str) -> SubscriptionLedger | None:
        with self.sessions() as session:
            return session.get(SubscriptionLedger, (facility, f"Subscription/sub-{facility}"))

    def passed(self, facility: str, settings: Settings) -> GapReport:
        return check_gaps(self.sessions, self.clients.get, facility, settings)

    def events_calls(self, facility: str) -> int:
        return sum(
            1
            for url, _ in self.transport.seen
            if f"/{facility}/fhir/Subscription/" in url and "$events" in url
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GapWorld]:
    workdir: Path = tmp_path_factory.mktemp("gaps")
    scenario = scenario_for(
        workdir,
        base_database_url=BASE_DATABASE_URL,
        redis_url=REDIS_URL,
        facilities=[WITH_EVENTS, WITHOUT_EVENTS, R5],
    )
    scenario.prepare()
    config_path = workdir / "ehrsim.yaml"
    config = yaml.safe_load(config_path.read_text())
    for facility in config["facilities"]:
        if facility["id"] == WITHOUT_EVENTS:  # a server with $status but no $events (athena, HAPI...)
            facility["profile_overrides"] = {"subscription_operations": ["status"]}
        if facility["id"] == R5:  # R5 notifications, and an R5 $events answer
            facility["webhook"]["style"] = "r5"
    config_path.write_text(yaml.safe_dump(config))
    engine = make_engine(scenario.database_url, pool_size=4)
    transport = Recording()
    clients = EHRClientPool(timeout_s=10, transport=transport)
    try:
        scenario.start(workers=0, beat=False)  # ehrsim and the receiver: nothing drains the inbox
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            for fid in (WITH_EVENTS, WITHOUT_EVENTS, R5):
                facility = session.get(Facility, fid)
                assert facility is not None
                outcome = probe_facility(session, facility, clients.get(facility), now=datetime.now(UTC))
                assert outcome.capabilities is not None
                assert outcome.capabilities.subscription_events is (fid != WITHOUT_EVENTS)
        yield GapWorld(scenario, sessions, clients, transport)
    finally:
        clients.close()
        engine.dispose()
        scenario.teardown()


def _missed(facility: str) -> float:
    return REGISTRY.get_sample_value("ehri_events_missed_total", {"facility": facility}) or 0.0


def _delivered_once(world: GapWorld, facility: str) -> int:
    """One change, delivered; the ledger's highest event number once it arrived."""
    before = world.ledger(facility)
    highest = before.highest_event if before is not None and before.highest_event is not None else 0
    world.admin(facility, "activity", {"changes": 1})
    wait_until(
        lambda: (row := world.ledger(facility)) is not None and (row.highest_event or 0) > highest,
        timeout=20,
        what="the notification in the ledger",
    )
    row = world.ledger(facility)
    assert row is not None
    assert row.highest_event is not None
    return row.highest_event


def _dropped_gap(world: GapWorld, facility: str) -> dict[str, Any]:
    """A notification ehrsim drops between two it delivers: one event number missing in the ledger.
    Returns what ehrsim says it dropped."""
    _delivered_once(world, facility)
    world.admin(facility, "faults", {"drop_next": 1})
    world.admin(facility, "activity", {"changes": 1})
    dropped: dict[str, Any] = world.admin(facility, "notifications/dropped")["events"][-1]
    assert dropped["reason"] == "fault-drop"
    _delivered_once(world, facility)
    number = dropped["event_number"]
    row = world.ledger(facility)
    assert row is not None
    assert [number, number] in row.missing
    return dropped


def _gap(world: GapWorld, facility: str, number: int) -> SubscriptionGap:
    with world.sessions() as session:
        return session.scalars(
            select(SubscriptionGap).where(
                SubscriptionGap.facility_id == facility,
                SubscriptionGap.kind == GAP,
                SubscriptionGap.first_event <= number,
                SubscriptionGap.last_event >= number,
            )
        ).one()


def _stored(world: GapWorld, facility: str, dropped: dict[str, Any]) -> Resource | None:
    with world.sessions() as session:
        return session.get(Resource, (facility, dropped["resourceType"], dropped["id"]))


def _truth(world: GapWorld, facility: str, dropped: dict[str, Any]) -> dict[str, Any]:
    resources = world.admin(facility, "truth")["resources"]
    return next(
        r for r in resources if (r["resourceType"], r["id"]) == (dropped["resourceType"], dropped["id"])
    )


@pytest.mark.parametrize("facility", [WITH_EVENTS, R5])
def test_a_dropped_event_is_fetched_with_events_after_the_grace_and_counted_missed(
    world: GapWorld, facility: str
) -> None:
    dropped = _dropped_gap(world, facility)
    number = dropped["event_number"]
    missed = _missed(facility)

    held = world.passed(facility, HOLD)  # within the grace: tracked, nothing fetched
    assert (held.tracked, held.missed, world.events_calls(facility)) == (1, 0, 0)
    assert _gap(world, facility, number).state == "open"
    assert _stored(world, facility, dropped) is None

    report = world.passed(facility, DUE)

    assert (report.missed, report.fetched, report.recovered, report.requested) == (1, 1, 1, 0)
    assert world.events_calls(facility) == 1
    gap = _gap(world, facility, number)
    assert (gap.state, gap.missed, gap.recovered, gap.reason) == (RECOVERED, 1, 1, None)
    stored = _stored(world, facility, dropped)
    truth = _truth(world, facility, dropped)
    assert stored is not None
    assert (stored.version_id, stored.deleted) == (truth["versionId"], truth["deleted"])
    with world.sessions() as session:
        recovered = session.scalars(
            select(RecoveredChange).where(
                RecoveredChange.facility_id == facility, RecoveredChange.resource_id == dropped["id"]
            )
        ).all()
        # recovered, unless a notification of the same resource is still on its way (nothing drains here)
        pending = session.scalars(
            select(InboxRow.id).where(
                InboxRow.facility_id == facility,
                InboxRow.focus_type == dropped["resourceType"],
                InboxRow.focus_id == dropped["id"],
                InboxRow.status == "pending",
            )
        ).all()
        assert [r.strategy for r in recovered] == ([] if pending else ["events"])
        opened = session.scalars(
            select(ReconcileRequest).where(ReconcileRequest.facility_id == facility)
        ).all()
        assert opened == []  # $events gave it all: nothing to reconcile
    assert _missed(facility) == missed + 1
    # handled once: later passes leave it alone
    again = world.passed(facility, DUE)
    assert (again.missed, again.tracked, world.events_calls(facility)) == (0, 0, 1)


def test_without_events_a_dropped_event_is_recovered_by_a_reconcile_of_the_gaps_window(
    world: GapWorld,
) -> None:
    dropped = _dropped_gap(world, WITHOUT_EVENTS)
    changed_at = datetime.fromisoformat(
        _truth(world, WITHOUT_EVENTS, dropped)["lastUpdated"].replace("Z", "+00:00")
    )
    world.passed(WITHOUT_EVENTS, HOLD)
    missed = _missed(WITHOUT_EVENTS)

    report = world.passed(WITHOUT_EVENTS, DUE)

    assert (report.missed, report.fetched, report.requested) == (1, 0, 1)
    assert world.events_calls(WITHOUT_EVENTS) == 0
    gap = _gap(world, WITHOUT_EVENTS, dropped["event_number"])
    assert (gap.state, gap.reason) == (REQUESTED, "events_not_advertised")
    assert gap.window_since <= changed_at
    with world.sessions() as session:
        request = session.scalars(
            select(ReconcileRequest).where(
                ReconcileRequest.facility_id == WITHOUT_EVENTS, ReconcileRequest.reason == "subscription_gap"
            )
        ).one()
        assert (request.since, request.consumed_at) == (gap.window_since, None)
        assert WITHOUT_EVENTS in due_facilities(session)
    assert _missed(WITHOUT_EVENTS) == missed + 1
    assert _stored(world, WITHOUT_EVENTS, dropped) is None

    run = reconcile_facility(world.sessions, world.clients.get, WITHOUT_EVENTS, Settings(), only_if_due=True)

    assert run.outcome == "complete"
    assert run.requests == [request.id]
    stored = _stored(world, WITHOUT_EVENTS, dropped)
    truth = _truth(world, WITHOUT_EVENTS, dropped)
    assert stored is not None
    assert (stored.version_id, stored.deleted) == (truth["versionId"], truth["deleted"])


def test_a_gap_a_reordered_event_fills_within_the_grace_is_closed_and_not_counted_missed(
    world: GapWorld,
) -> None:
    _delivered_once(world, WITH_EVENTS)
    world.admin(WITH_EVENTS, "faults", {"delay_s": 2.0})  # this one is held back...
    world.admin(WITH_EVENTS, "activity", {"changes": 1})
    world.admin(WITH_EVENTS, "faults", {"delay_s": 0.0})
    late = _delivered_once(world, WITH_EVENTS) - 1  # ...and the next overtakes it
    row = world.ledger(WITH_EVENTS)
    assert row is not None
    assert [late, late] in row.missing
    held = world.passed(WITH_EVENTS, HOLD)
    assert held.tracked == 1
    calls, missed = world.events_calls(WITH_EVENTS), _missed(WITH_EVENTS)
    wait_until(
        lambda: (r := world.ledger(WITH_EVENTS)) is not None and [late, late] not in r.missing,
        timeout=20,
        what="the late event",
    )

    report = world.passed(WITH_EVENTS, DUE)

    assert (report.filled, report.missed, report.fetched) == (1, 0, 0)
    gap = _gap(world, WITH_EVENTS, late)
    assert (gap.state, gap.missed) == (FILLED, 0)
    assert _missed(WITH_EVENTS) == missed
    assert world.events_calls(WITH_EVENTS) == calls


def test_an_epoch_reset_requests_a_reconcile_since_the_last_good_event_once(world: GapWorld) -> None:
    _delivered_once(world, WITHOUT_EVENTS)
    world.passed(WITHOUT_EVENTS, HOLD)  # what this pass sees is the last good event
    row = world.ledger(WITHOUT_EVENTS)
    assert row is not None
    assert row.highest_event_at is not None
    epoch, last_good = row.epoch, row.highest_event_at

    world.admin(WITHOUT_EVENTS, "faults", {"actions": ["restart-counters"]})
    world.admin(WITHOUT_EVENTS, "activity", {"changes": 1})
    wait_until(
        lambda: (r := world.ledger(WITHOUT_EVENTS)) is not None and r.epoch == epoch + 1,
        timeout=20,
        what="the new epoch in the ledger",
    )
    report = world.passed(WITHOUT_EVENTS, HOLD)
    again = world.passed(WITHOUT_EVENTS, DUE)

    assert (report.epochs, again.epochs) == (1, 0)
    with world.sessions() as session:
        requests = session.scalars(
            select(ReconcileRequest).where(
                ReconcileRequest.facility_id == WITHOUT_EVENTS,
                ReconcileRequest.reason == "subscription_epoch",
            )
        ).all()
        assert len(requests) == 1
        assert requests[0].since <= last_good
        assert requests[0].since >= last_good - timedelta(minutes=1)
        resets = session.scalars(
            select(SubscriptionGap).where(
                SubscriptionGap.facility_id == WITHOUT_EVENTS, SubscriptionGap.kind == EPOCH
            )
        ).all()
        assert [(g.epoch, g.state, g.handled_at is not None) for g in resets] == [
            (epoch + 1, REQUESTED, True)
        ]
        assert WITHOUT_EVENTS in due_facilities(session)
    run = reconcile_facility(world.sessions, world.clients.get, WITHOUT_EVENTS, Settings(), only_if_due=True)
    assert run.outcome == "complete"
    assert requests[0].id in run.requests
    with world.sessions() as session:
        request = session.get(ReconcileRequest, requests[0].id)
        assert request is not None
        assert request.consumed_at is not None


def test_a_claimed_gap_is_not_taken_by_another_pass_until_its_lease_runs_out(world: GapWorld) -> None:
    dropped = _dropped_gap(world, WITHOUT_EVENTS)
    world.passed(WITHOUT_EVENTS, HOLD)
    gap_id = _gap(world, WITHOUT_EVENTS, dropped["event_number"]).id
    now = datetime.now(UTC)

    first = claim(world.sessions, gap_id, now)
    second = claim(world.sessions, gap_id, now)
    during = world.passed(WITHOUT_EVENTS, DUE)  # a whole pass while the claim is held
    after_lease = claim(world.sessions, gap_id, now + CLAIM_LEASE + timedelta(seconds=1))

    assert first is not None
    assert second is None
    assert (during.missed, during.requested) == (0, 0)
    assert after_lease is not None  # the first pass died, say: another takes the gap over
    lost = finish(world.sessions, first, REQUESTED, now, missed=1, fetched=0, reason="test")
    won = finish(world.sessions, after_lease, REQUESTED, now, missed=1, fetched=0, reason="test")
    assert (lost, won) == (False, True)
    assert finish(world.sessions, after_lease, REQUESTED, now, missed=1, fetched=0, reason="test") is False


def test_two_passes_at_once_handle_a_gap_once(world: GapWorld) -> None:
    dropped = _dropped_gap(world, WITH_EVENTS)
    world.passed(WITH_EVENTS, HOLD)
    calls, missed = world.events_calls(WITH_EVENTS), _missed(WITH_EVENTS)
    passes = 3
    start = threading.Barrier(passes)
    reports: list[GapReport] = []

    def one_pass() -> None:
        start.wait()
        reports.append(world.passed(WITH_EVENTS, DUE))

    world.admin(WITH_EVENTS, "faults", {"slow_s": 0.5})  # handling takes a while: the passes overlap
    try:
        threads = [threading.Thread(target=one_pass) for _ in range(passes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        world.admin(WITH_EVENTS, "faults", {"slow_s": 0.0})

    assert len(reports) == passes
    assert sorted(r.missed for r in reports) == [0] * (passes - 1) + [1]
    assert sum(r.fetched for r in reports) == 1
    assert world.events_calls(WITH_EVENTS) == calls + 1
    assert _missed(WITH_EVENTS) == missed + 1
    assert _gap(world, WITH_EVENTS, dropped["event_number"]).state == RECOVERED

"""The reconciler end to end against each vendor profile ehrsim simulates, with real processes (ehrsim,
receiver, beat, a worker, Postgres, Redis). The facility is probed as ``facilities apply`` probes it, so
each type's strategy is the one its capabilities choose (and the one its watermark says ran). Of the
changes made: what the type's change search sees (creates; updates except Epic's) reaches Postgres within
one reconcile interval with no re-crawl in between; the rest (Epic's edits, Oracle's minor edits, every
deletion) within one re-crawl period, both set short. The recovered resources are exactly those whose
latest change no notification delivered, and the change feed holds no change twice.

Epic, Oracle and MEDITECH push nothing (no sender at all). athena, HAPI and Medplum send notifications,
30 % dropped; the webhook path drains before the reconcile interval is set short, so that what it left
behind is known. HAPI's default notification is an empty POST: it names nothing and asks for a reconcile,
so every change is the reconciler's. The cohort the per-patient strategies poll is formed as in
production: no Group is configured (Epic, Oracle and athena serve none), so the patients are those the
reconciler's own Patient crawl stored (Epic: by birth-date ranges, its Patient search needing criteria)
and the subjects of what it and the notifications brought."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.db.engine import make_engine, make_sessionmaker
from app.db.models import Facility
from app.ehr.pool import EHRClientPool
from app.reconcile.plan import plan_for
from app.reconcile.probe import load_capabilities, probe_facility
from app.vendors.registry import adapter_for
from devstack.processes import wait_until
from devstack.scenario import Scenario
from tests.e2e.conftest import MakeScenario

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
TYPES = ["Patient", "Observation", "Condition"]
INTERVAL_S = 3  # the reconcile interval (set short)
RECRAWL_S = 12  # the re-crawl period (set short, and long enough that runs without a re-crawl come between)
SLACK_S = 15  # a run's own duration and a tick, on a loaded machine
PATIENTS = 4
CHANGES = 40
ENV = {
    "EHRI_RECONCILE_TICK": "PT0.5S",
    # MEDITECH asks 5 s between $export status polls: honoured up to half a second here
    "EHRI_BULK_RETRY_AFTER_CAP": "PT0.5S",
    "EHRI_BULK_POLL_INTERVAL": "PT0.5S",
}


@dataclass(frozen=True)
class Case:
    strategy: str  # what the probe chooses for the clinical types
    notifies: bool  # the profile sends notifications (30 % then dropped)
    #: Its notifications name what changed (HAPI's default empty POST names nothing: it asks for a
    #: reconcile, and every change is then the reconciler's to find).
    focused: bool = True
    overrides: dict[str, Any] | None = None  # ehrsim profile fields changed
    #: Its change search finds updates (Epic's created dates find only what is new: its edits wait for
    #: the re-crawl, as do Oracle's minor edits).
    finds_updates: bool = True
    #: Its change search finds deletions (``last-updated`` reading ``_history`` where it is advertised:
    #: HAPI, Medplum); elsewhere they wait for the re-crawl.
    finds_deletions: bool = False
    #: What the probe chooses for Patient, where it differs: Oracle and athena have ``_lastUpdated`` on
    #: clinical types only, so Patient (no patient to scope it by) is crawled whole by created-date.
    patient: str | None = None

    def strategies(self) -> dict[str, str]:
        return {t: self.patient if t == "Patient" and self.patient else self.strategy for t in TYPES}


CASES = {
    "epic": Case("created-date", notifies=False, overrides={"token_flaky_400_rate": 0}, finds_updates=False),
    "oracle": Case("patient-last-updated", notifies=False, patient="created-date"),
    "meditech": Case("bulk-since", notifies=False),
    "athena": Case("patient-last-updated", notifies=True, patient="created-date"),
    "hapi": Case("last-updated", notifies=True, focused=False, finds_deletions=True),
    "medplum": Case("last-updated", notifies=True),  # instance _history only: the re-crawl finds deletions
}


def _configure(scenario: Scenario) -> None:
    reconcile = {"interval": f"PT{INTERVAL_S}S", "recrawl_interval": f"PT{RECRAWL_S}S", "types": TYPES}
    scenario.sql(
        "UPDATE facilities SET reconcile = CAST(:r AS jsonb), updated_at = now() WHERE id = :f",
        r=json.dumps(reconcile),
        f=FACILITY,
    )


def _probe(scenario: Scenario, strategies: dict[str, str]) -> None:
    """Probe the facility as ``facilities apply`` does; every type's plan is the probe's choice."""
    engine = make_engine(scenario.database_url, pool_size=1)
    pool = EHRClientPool()
    try:
        with make_sessionmaker(engine).begin() as session:
            facility = session.get(Facility, FACILITY)
            assert facility is not None
            outcome = probe_facility(session, facility, pool.get(facility), now=datetime.now(UTC))
            assert outcome.ok, (outcome.reason, outcome.detail)
        with make_sessionmaker(engine)() as session:
            facility = session.get(Facility, FACILITY)
            assert facility is not None
            plan = plan_for(
                facility, adapter_for(facility.vendor), capabilities=load_capabilities(session, FACILITY)
            )
        assert {(p.resource_type, p.strategy, p.source) for p in plan.types} == {
            (t, s, "probe") for t, s in strategies.items()
        }
    finally:
        pool.close()
        engine.dispose()


def _faults(scenario: Scenario, body: dict[str, object]) -> None:
    httpx.post(f"{scenario.sim_url}/_admin/{FACILITY}/faults", json=body, timeout=10).raise_for_status()


def _truth(scenario: Scenario) -> list[dict[str, Any]]:
    return [r for r in scenario.truth(FACILITY) if r["resourceType"] in TYPES]


def _visible(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The EHR's resources a search could ever have seen: not those created and deleted in one burst."""
    known = {(r["resourceType"], r["id"]) for r in before}
    return [r for r in after if not (r["deleted"] and (r["resourceType"], r["id"]) not in known)]


def _changed(before: list[dict[str, Any]], visible: list[dict[str, Any]]) -> set[tuple[str, str]]:
    old = {(r["resourceType"], r["id"]): (r["versionId"], r["deleted"]) for r in before}
    return {
        (r["resourceType"], r["id"])
        for r in visible
        if old.get((r["resourceType"], r["id"])) != (r["versionId"], r["deleted"])
    }


def _kinds(before: list[dict[str, Any]], visible: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """What each change was; ``minor-edit``: an update that left ``lastUpdated`` as it was (Oracle)."""
    old = {(r["resourceType"], r["id"]): r for r in before}
    kinds = {}
    for key in _changed(before, visible):
        now = next(r for r in visible if (r["resourceType"], r["id"]) == key)
        prior = old.get(key)
        if prior is None:
            kinds[key] = "create"
        elif now["deleted"]:
            kinds[key] = "delete"
        else:
            kinds[key] = "minor-edit" if now["lastUpdated"] == prior["lastUpdated"] else "update"
    return kinds


def _wrong(scenario: Scenario, truth: list[dict[str, Any]]) -> list[str]:
    """What of ``truth`` Postgres does not hold as the EHR does (by content where it serves no meta)."""
    wanted = {(r["resourceType"], r["id"]) for r in truth}
    report = scenario.ledger(FACILITY)
    keys = [*report.missing, *report.behind, *report.not_tombstoned]
    return [k for k in keys if tuple(k.split("/", 1)) in wanted]


def _recovered_since(scenario: Scenario, after_id: int) -> set[tuple[str, str]]:
    rows = scenario.sql(
        "SELECT DISTINCT resource_type, resource_id FROM reconcile_recovered"
        " WHERE facility_id = :f AND id > :i AND resource_type = ANY(:t)",
        f=FACILITY,
        i=after_id,
        t=TYPES,
    )
    return {(r.resource_type, r.resource_id) for r in rows}


def _last_recovered_id(scenario: Scenario) -> int:
    return int(scenario.sql("SELECT coalesce(max(id), 0) FROM reconcile_recovered")[0][0])


def _complete_runs(scenario: Scenario) -> int:
    return int(
        scenario.sql(
            "SELECT count(*) FROM reconcile_runs WHERE facility_id = :f AND outcome = 'complete'", f=FACILITY
        )[0][0]
    )


def _recrawled(scenario: Scenario) -> dict[str, datetime]:
    """When each clinical type's last re-crawl completed (Patient, with no patient to scope it by, is
    crawled whole on every run by the per-patient strategies: its search is its re-crawl)."""
    rows = scenario.sql(
        "SELECT resource_type, recrawled_at FROM reconcile_watermarks"
        " WHERE facility_id = :f AND resource_type <> 'Patient'",
        f=FACILITY,
    )
    return {r.resource_type: r.recrawled_at for r in rows}


def _runs(scenario: Scenario) -> int:
    return int(scenario.sql("SELECT count(*) FROM reconcile_runs WHERE facility_id = :f", f=FACILITY)[0][0])


def _notified(scenario: Scenario) -> set[tuple[str | None, str | None]]:
    rows = scenario.sql("SELECT focus_type, focus_id FROM inbox WHERE facility_id = :f", f=FACILITY)
    return {(r.focus_type, r.focus_id) for r in rows}


def _applied_twice(scenario: Scenario, truth: list[dict[str, Any]]) -> list[str]:
    """Changes the change feed holds twice: a version listed twice, or (where the EHR serves no versions:
    Epic) more entries for a resource than the EHR made versions of it (``versionId`` is then ehrsim's own
    count)."""
    rows = scenario.sql(
        "SELECT resource_type, resource_id, version_id, deleted, count(*) AS n FROM change_feed"
        " WHERE facility_id = :f GROUP BY 1, 2, 3, 4",
        f=FACILITY,
    )
    versions = {(r["resourceType"], r["id"]): r for r in truth}
    entries: dict[tuple[str, str], int] = {}
    twice = []
    for row in rows:
        key = (row.resource_type, row.resource_id)
        entries[key] = entries.get(key, 0) + int(row.n)
        if row.version_id is not None and row.n > 1:
            twice.append(f"{key[0]}/{key[1]} version {row.version_id}")
    for key, n in entries.items():
        item = versions.get(key)
        if item is not None and not item["versioned"] and n > int(item["versionId"]):
            twice.append(f"{key[0]}/{key[1]}: {n} entries, {item['versionId']} versions")
    return twice


@pytest.mark.parametrize("profile", list(CASES))
def test_every_change_of_a_vendor_profile_is_reconciled_with_the_probed_strategy(
    make_scenario: MakeScenario, profile: str
) -> None:
    case = CASES[profile]
    scenario = make_scenario(patients=PATIENTS, profile=profile, profile_overrides=case.overrides)
    _configure(scenario)
    stack = scenario.start(workers=1, concurrency=2, beat=False, env=ENV)
    _probe(scenario, case.strategies())
    if case.notifies:
        # a first run of the seed patients, then none until the webhook path drained
        scenario.sql(
            'UPDATE facilities SET reconcile = reconcile || \'{"interval": "PT1H"}\' WHERE id = :f',
            f=FACILITY,
        )
    stack.start_beat()
    seed = _truth(scenario)
    wait_until(lambda: _complete_runs(scenario) > 0, timeout=30, what="the first reconcile")
    wait_until(lambda: not _wrong(scenario, seed), timeout=INTERVAL_S + SLACK_S, what="the seed patients")
    assert _recovered_since(scenario, 0) == {(r["resourceType"], r["id"]) for r in seed}
    baseline = _last_recovered_id(scenario)

    if case.notifies:
        _faults(scenario, {"drop_rate": 0.3})
    recrawled = _recrawled(scenario)
    made_at = time.monotonic()
    scenario.make_changes(FACILITY, CHANGES)
    visible = _visible(seed, _truth(scenario))
    changed = _changed(seed, visible)
    kinds = _kinds(seed, visible)
    assert {"create", "update", "delete"} <= set(kinds.values()), kinds
    if profile == "oracle":  # edits its _lastUpdated ignores: only the re-crawl sees them
        assert "minor-edit" in kinds.values(), kinds

    if case.notifies:
        runs = _runs(scenario)

        def drained() -> bool:
            return scenario.sender_counters(FACILITY)["pending"] == 0 and scenario.ledger(FACILITY).drained

        wait_until(drained, timeout=30, what="every delivered notification drained")
        counters = scenario.sender_counters(FACILITY)
        assert counters["dropped"] > 0
        assert counters["delivered"] > 0
        if case.focused:
            # No reconcile ran meanwhile: what Postgres lacks now, the notifications did not deliver.
            assert _runs(scenario) == runs
            undelivered = {(t, i) for t, i in (k.split("/", 1) for k in _wrong(scenario, visible))}
            assert undelivered, "with 30 % dropped some change should have no notification at all"
            assert len(undelivered) < len(changed)
        else:
            assert _notified(scenario) == {(None, None)}
            undelivered = changed
        # the interval the facility is given now: its next run is due
        _configure(scenario)
    else:
        assert scenario.sender_counters(FACILITY).get("delivered", 0) == 0
        undelivered = changed

    # What the change search sees, within one interval of the changes (plus a run of slack), found by
    # the change search itself: no re-crawl ran meanwhile.
    searchable = {"create", "update"} if case.finds_updates else {"create"}
    if case.finds_deletions:
        searchable.add("delete")
    seen = [r for r in visible if kinds.get((r["resourceType"], r["id"])) in searchable]
    wait_until(
        lambda: not _wrong(scenario, seen), timeout=INTERVAL_S + SLACK_S, what="what a change search sees"
    )
    assert time.monotonic() - made_at <= INTERVAL_S + SLACK_S
    assert _recrawled(scenario) == recrawled
    # the rest within one re-crawl period
    wait_until(
        lambda: not _wrong(scenario, visible), timeout=RECRAWL_S + SLACK_S, what="every change reconciled"
    )
    assert time.monotonic() - made_at <= RECRAWL_S + SLACK_S
    assert _wrong(scenario, visible) == []
    assert _recovered_since(scenario, baseline) == undelivered
    # the strategy the probe chose is the one each type ran
    marks = scenario.sql(
        "SELECT resource_type, strategy, last_outcome FROM reconcile_watermarks WHERE facility_id = :f",
        f=FACILITY,
    )
    assert {(m.resource_type, m.strategy) for m in marks} == set(case.strategies().items())
    assert {m.last_outcome for m in marks} == {"complete"}
    # the change feed has no change applied twice
    assert _applied_twice(scenario, scenario.truth(FACILITY)) == []

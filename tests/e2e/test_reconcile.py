"""The reconciler end to end with real processes (ehrsim, receiver, beat, a worker, Postgres, Redis):
an EHR whose feed sends nothing still gets every create, update and delete into Postgres within one
reconcile interval, counted as recovered; a reconcile killed with SIGKILL mid-run loses nothing and its
watermarks are never ahead of what is committed."""

from __future__ import annotations

import itertools
import json
import sys
from datetime import datetime
from typing import Any

import httpx
import pytest

from devstack.processes import wait_until
from devstack.scenario import Scenario

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
TYPES = ["Patient", "Observation", "Condition"]
INTERVAL_S = 3
ENV = {"EHRI_RECONCILE_TICK": "PT0.5S"}


def _sql(scenario: Scenario, statement: str, **params: Any) -> list[Any]:
    return scenario.sql(statement, **params)


def _configure(scenario: Scenario, **reconcile: Any) -> None:
    config = {"interval": f"PT{INTERVAL_S}S", "recrawl_interval": f"PT{INTERVAL_S}S", "types": TYPES}
    _sql(
        scenario,
        "UPDATE facilities SET reconcile = CAST(:r AS jsonb), updated_at = now() WHERE id = :f",
        r=json.dumps({**config, **reconcile}),
        f=FACILITY,
    )


def _faults(scenario: Scenario, body: dict[str, object]) -> None:
    httpx.post(f"{scenario.sim_url}/_admin/{FACILITY}/faults", json=body, timeout=10).raise_for_status()


def _visible(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The EHR's resources a search could ever have seen: not those created and deleted in one burst."""
    known = {(r["resourceType"], r["id"]) for r in before}
    return [r for r in after if not (r["deleted"] and (r["resourceType"], r["id"]) not in known)]


def _changed(before: list[dict[str, Any]], visible: list[dict[str, Any]]) -> int:
    old = {(r["resourceType"], r["id"]): (r["versionId"], r["deleted"]) for r in before}
    return sum(old.get((r["resourceType"], r["id"])) != (r["versionId"], r["deleted"]) for r in visible)


def _ledger_ok(scenario: Scenario, truth: list[dict[str, Any]]) -> list[str]:
    stored = {
        (r.resource_type, r.resource_id): (r.version_id, r.deleted)
        for r in _sql(
            scenario,
            "SELECT resource_type, resource_id, version_id, deleted FROM resources WHERE facility_id = :f",
            f=FACILITY,
        )
    }
    wrong = []
    for r in truth:
        got = stored.get((r["resourceType"], r["id"]))
        if r["deleted"] and (got is None or not got[1]):
            wrong.append(f"{r['resourceType']}/{r['id']} not tombstoned")
        elif not r["deleted"] and got != (r["versionId"], False):
            wrong.append(f"{r['resourceType']}/{r['id']} missing or behind")
    return wrong


def _recovered(scenario: Scenario) -> int:
    return int(
        _sql(scenario, "SELECT count(*) FROM reconcile_recovered WHERE facility_id = :f", f=FACILITY)[0][0]
    )


def test_a_facility_that_sends_nothing_has_every_change_within_one_interval(scenario: Scenario) -> None:
    _configure(scenario)
    scenario.start(workers=1, concurrency=2, beat=True, env=ENV)
    _faults(scenario, {"feed_stopped": True})
    before = scenario.truth(FACILITY)
    scenario.make_changes(FACILITY, 60)
    after = scenario.truth(FACILITY)
    visible = _visible(before, after)
    assert scenario.sender_counters(FACILITY).get("delivered", 0) == 0

    # within one interval of the changes (plus a run and a tick of slack)
    wait_until(lambda: not _ledger_ok(scenario, visible), timeout=INTERVAL_S + 20, what="every change")

    assert _ledger_ok(scenario, visible) == []
    assert _recovered(scenario) == _changed(before, visible)
    # the change feed has no change applied twice
    assert (
        _sql(
            scenario,
            "SELECT resource_type, resource_id, version_id, deleted, count(*) FROM change_feed"
            " WHERE facility_id = :f GROUP BY 1, 2, 3, 4 HAVING count(*) > 1",
            f=FACILITY,
        )
        == []
    )


def _watermarks(scenario: Scenario) -> dict[str, datetime]:
    rows = _sql(
        scenario,
        "SELECT resource_type, watermark FROM reconcile_watermarks"
        " WHERE facility_id = :f AND watermark IS NOT NULL",
        f=FACILITY,
    )
    return {r.resource_type: r.watermark for r in rows}


def _not_ahead(scenario: Scenario, truth: list[dict[str, Any]]) -> list[str]:
    """Resources of a type at or before its watermark that Postgres does not hold at that version."""
    marks = _watermarks(scenario)
    stored = {
        (r.resource_type, r.resource_id): r.version_id
        for r in _sql(
            scenario,
            "SELECT resource_type, resource_id, version_id FROM resources WHERE facility_id = :f",
            f=FACILITY,
        )
    }
    ahead = []
    for r in truth:
        mark = marks.get(r["resourceType"])
        if mark is None or r["deleted"]:
            continue
        if (
            datetime.fromisoformat(r["lastUpdated"]) <= mark
            and stored.get((r["resourceType"], r["id"])) is None
        ):
            ahead.append(f"{r['resourceType']}/{r['id']}")
    return ahead


def test_a_reconcile_killed_mid_run_loses_nothing_and_its_watermark_is_never_ahead(
    scenario: Scenario,
) -> None:
    _configure(scenario, interval="PT1H")  # one run, then the resumed one after the kill
    stack = scenario.start(workers=0, beat=True, env=ENV)
    before = scenario.truth(FACILITY)
    _faults(scenario, {"feed_stopped": True, "slow_s": 0.4})  # each page takes 0.4 s: the run is slow
    scenario.make_changes(FACILITY, 150)
    after = scenario.truth(FACILITY)
    victim = stack.start_worker("victim", 1)

    def mid_run() -> bool:
        stored = _sql(scenario, "SELECT count(*) FROM resources WHERE facility_id = :f", f=FACILITY)[0][0]
        return int(stored) > 0

    wait_until(mid_run, timeout=60, what="the first committed page")
    victim.kill()  # SIGKILL to the node's process group, mid-run
    assert _not_ahead(scenario, after) == []
    unfinished = _sql(
        scenario, "SELECT count(*) FROM reconcile_runs WHERE outcome IS NULL AND facility_id = :f", f=FACILITY
    )
    assert unfinished[0][0] == 1  # it died mid-run

    _faults(scenario, {"slow_s": 0})
    # the killed run never finished: the next tick continues it (not an hour later)
    stack.start_worker("rescuer", 1)
    visible = _visible(before, after)
    wait_until(lambda: not _ledger_ok(scenario, visible), timeout=60, what="every change after the kill")
    assert _not_ahead(scenario, after) == []
    assert _recovered(scenario) == _changed(before, visible)


def test_notifications_dropped_by_the_sender_are_recovered_and_counted(scenario: Scenario) -> None:
    """30 % of notifications dropped. Changes are made in one burst, so a resource with any delivered
    notification is fetched at its latest version by the webhook path; the rest are the reconciler's
    to find: exactly those are recovered."""
    _configure(scenario, interval="PT1H")  # the first run (an empty EHR) now, the next one on request
    scenario.start(workers=1, concurrency=2, beat=True, env=ENV)
    wait_until(
        lambda: bool(_sql(scenario, "SELECT 1 FROM reconcile_runs WHERE outcome = 'complete'")),
        timeout=30,
        what="the first reconcile",
    )
    _faults(scenario, {"drop_rate": 0.3})
    scenario.make_changes(FACILITY, 60)
    truth = _visible([], scenario.truth(FACILITY))

    def drained() -> bool:
        return scenario.sender_counters(FACILITY)["pending"] == 0 and scenario.ledger(FACILITY).drained

    wait_until(drained, timeout=60, what="every delivered notification drained")
    assert scenario.sender_counters(FACILITY)["dropped"] > 0
    notified = {
        (r.focus_type, r.focus_id)
        for r in _sql(scenario, "SELECT focus_type, focus_id FROM inbox WHERE facility_id = :f", f=FACILITY)
    }
    never_notified = [r for r in truth if (r["resourceType"], r["id"]) not in notified]
    assert never_notified, "with 30 % dropped some resource should have no notification at all"

    # what the interval's next run would do, asked for now (as a notification without a focus asks)
    _sql(
        scenario,
        "INSERT INTO reconcile_runs (facility_id, trigger, outcome) VALUES (:f, 'test', 'requested')",
        f=FACILITY,
    )
    wait_until(lambda: not _ledger_ok(scenario, truth), timeout=30, what="every change after the reconcile")
    assert _recovered(scenario) == len(never_notified)


def test_two_beats_and_three_workers_reconcile_each_facility_once_per_interval(scenario: Scenario) -> None:
    _configure(scenario, interval="PT2S")
    stack = scenario.start(workers=3, concurrency=1, beat=True, env=ENV)
    celery_beat = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "--schedule"]
    second = stack.start("beat2", [*celery_beat, str(scenario.workdir / "beat2-schedule")])

    def runs() -> list[Any]:
        return _sql(
            scenario,
            "SELECT started_at, finished_at FROM reconcile_runs"
            " WHERE facility_id = :f AND outcome = 'complete' ORDER BY started_at",
            f=FACILITY,
        )

    wait_until(lambda: len(runs()) >= 4, timeout=30, what="four reconcile runs")
    assert second.alive()  # both beats fanned out all along
    done = runs()
    for earlier, later in itertools.pairwise(done):
        assert later.started_at >= earlier.finished_at  # never two at once
        assert (later.started_at - earlier.started_at).total_seconds() >= 2 - 0.05  # once per interval

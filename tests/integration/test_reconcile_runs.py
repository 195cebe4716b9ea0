"""How reconcile runs behave as runs: one per facility at a time, a time budget that commits and
continues, due-ness across several fan-outs, and the operator's ``backfill`` / ``reconcile status``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from app.cli.main import cli
from app.db.models import (
    Facility,
    FacilityCapabilities,
    ReconcileRequest,
    ReconcileRun,
    ReconcileWatermark,
    ResourceCapabilities,
)
from app.reconcile.capabilities import Capabilities, TypeCapabilities
from app.reconcile.probe import record_capabilities
from app.reconcile.schedule import due_facilities
from app.reconcile.service import PARTIAL, facility_lock
from app.reconcile.subscriptions import reconcile_window_requested
from app.settings import Settings, get_settings
from tests.conftest import REDIS_URL
from tests.integration.reconcile_world import World

FACILITY = "rc-hapi"


def test_a_second_reconcile_of_a_facility_does_nothing_while_one_runs(world: World) -> None:
    with facility_lock(world.sessions, FACILITY) as held:  # another process's run
        assert held
        report = world.reconcile(FACILITY)
    assert not report.locked
    assert report.types == []
    assert world.reconcile(FACILITY).locked


def test_a_facility_is_due_once_per_interval_however_many_fan_outs_ask(world: World) -> None:
    world.reconcile(FACILITY)
    with world.sessions() as session:
        assert FACILITY not in due_facilities(session)  # interval PT5M: just ran
        runs = session.scalar(select(func.count()).where(ReconcileRun.facility_id == FACILITY))
    # a duplicate beat's tasks: each checks again under the lock and finds it not due
    assert world.reconcile(FACILITY, only_if_due=True).skipped
    assert world.reconcile(FACILITY, only_if_due=True).skipped
    with world.sessions() as session:
        assert session.scalar(select(func.count()).where(ReconcileRun.facility_id == FACILITY)) == runs
        later = datetime.now(UTC) + timedelta(minutes=6)
        assert FACILITY in due_facilities(session, later)


def test_a_run_past_its_time_budget_keeps_what_it_committed_and_continues_next_time(world: World) -> None:
    facility = "rc-generic"
    world.admin(facility, "activity", {"changes": 5})
    report = world.reconcile(facility, Settings(reconcile_time_budget=timedelta(0)))
    assert report.outcome == PARTIAL
    assert [t.resource_type for t in report.types] == ["Patient"]  # stopped after its first page
    with world.sessions() as session:
        assert FACILITY  # the other facilities are untouched by this
        assert facility in due_facilities(session)  # continued at the next tick, not an interval later
    rest = world.reconcile(facility, only_if_due=True)
    assert rest.outcome == "complete"
    assert [t.resource_type for t in rest.types] == ["Patient", "Observation", "Condition"]


@pytest.fixture
def cli_env(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("EHRI_DATABASE_URL", world.database_url)
    monkeypatch.setenv("EHRI_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("EHRI_REDIS_PREFIX", f"rc-cli-{id(world)}:")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_backfill_runs_the_reconciler_on_demand_and_status_shows_its_watermarks(
    world: World, cli_env: None
) -> None:
    facility = "rc-oracle"
    world.admin(facility, "activity", {"changes": 10})
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    result = CliRunner().invoke(
        cli, ["backfill", facility, "--since", since, "--types", "Patient,Condition", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outcome"] == "complete"
    assert [t["resource_type"] for t in report["types"]] == ["Patient", "Condition"]
    assert {t["strategy"] for t in report["types"]} == {"patient-last-updated"}

    again = CliRunner().invoke(cli, ["backfill", facility], env={"COLUMNS": "200"})  # resumable: again
    assert again.exit_code == 0, again.output
    assert f"backfill {facility}: complete" in again.stdout

    status = CliRunner().invoke(cli, ["reconcile", "status", facility], env={"COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    with world.sessions() as session:
        marks = session.scalars(
            select(ReconcileWatermark.resource_type).where(ReconcileWatermark.facility_id == facility)
        ).all()
    for resource_type in marks:
        assert resource_type in status.stdout
    assert "last run" in status.stdout


def test_backfill_of_an_unknown_facility_is_a_usage_error(world: World, cli_env: None) -> None:
    result = CliRunner().invoke(cli, ["backfill", "nowhere"])
    assert result.exit_code == 2
    assert "unknown facility" in result.stderr


def test_a_facility_whose_key_cannot_be_read_records_a_failed_run_and_waits_an_interval(
    world: World,
) -> None:
    with world.sessions.begin() as session:
        template = session.get(Facility, FACILITY)
        assert template is not None
        broken = Facility(
            id="rc-broken",
            vendor="generic",
            base_url=template.base_url,
            auth={**template.auth, "private_key": {"file": "/nonexistent/key.pem"}},
            webhook={},
        )
        session.add(broken)
    report = world.reconcile("rc-broken", only_if_due=True)
    assert (report.outcome, report.failure) == ("failed", "secret_missing")
    with world.sessions() as session:
        run = session.scalars(select(ReconcileRun).where(ReconcileRun.facility_id == "rc-broken")).one()
        assert (run.outcome, run.reasons) == ("failed", {"-": "secret_missing"})
        assert "rc-broken" not in due_facilities(session)  # not every tick: the next interval


def test_a_run_uses_the_strategy_the_last_successful_probe_chose(world: World) -> None:
    facility = "rc-generic"
    per_patient = Capabilities(
        types={
            "Observation": TypeCapabilities(
                search_params=frozenset({"_lastUpdated", "patient"}), required_params=frozenset({"patient"})
            )
        }
    )
    with world.sessions.begin() as session:
        row = session.get(Facility, facility)
        assert row is not None
        record_capabilities(session, row, per_patient, now=datetime.now(UTC))
    try:
        report = world.reconcile(facility)
    finally:
        with world.sessions.begin() as session:
            session.execute(delete(ResourceCapabilities).where(ResourceCapabilities.facility_id == facility))
            session.execute(delete(FacilityCapabilities).where(FacilityCapabilities.facility_id == facility))
    assert report.outcome == "complete"
    assert {t.resource_type: t.strategy for t in report.types} == {
        "Patient": "last-updated",  # not advertised by this probe: the adapter's default
        "Observation": "patient-last-updated",
        "Condition": "last-updated",
    }


def _searched_since(world: World, facility: str) -> dict[str, datetime]:
    """The ``_lastUpdated=gt…`` lower bound each type's change search sent, since ``seen`` was cleared."""
    found: dict[str, datetime] = {}
    for url, _ in world.transport.seen:
        parsed = httpx.URL(url)
        value = parsed.params.get("_lastUpdated")
        if f"/{facility}/fhir/" in url and value:
            rtype = parsed.path.rsplit("/", 1)[-1]
            found[rtype] = datetime.fromisoformat(value.removeprefix("gt").replace("Z", "+00:00"))
    return found


def _request_window(world: World, facility: str, since: datetime) -> int:
    with world.sessions.begin() as session:
        return reconcile_window_requested(session, facility, since, reason="subscription_error").id


def _consumed_at(world: World, request_id: int) -> datetime | None:
    with world.sessions() as session:
        request = session.get(ReconcileRequest, request_id)
        assert request is not None
        return request.consumed_at


def test_a_requested_window_is_searched_from_its_start_and_consumed_once_the_run_committed(
    world: World,
) -> None:
    facility = "rc-generic"
    assert world.reconcile(facility).outcome == "complete"
    window = datetime.now(UTC) - timedelta(hours=2)  # before every watermark of the facility
    request_id = _request_window(world, facility, window)
    with world.sessions() as session:
        assert facility in due_facilities(session)  # just ran, but a window is open

    # a run that fails leaves the window open
    world.admin(facility, "faults", {"error_burst": {"requests": 4, "status": 503}})
    try:
        failed = world.reconcile(facility, only_if_due=True)
    finally:
        world.admin(facility, "faults", {"reset": True})
    assert failed.outcome == "failed"
    assert _consumed_at(world, request_id) is None

    world.transport.seen.clear()
    report = world.reconcile(facility, only_if_due=True)

    assert report.outcome == "complete"
    assert report.requests == [request_id]
    searched = _searched_since(world, facility)
    assert set(searched) == {"Patient", "Observation", "Condition"}
    assert all(lower <= window for lower in searched.values()), searched
    consumed = _consumed_at(world, request_id)
    assert consumed is not None
    with world.sessions() as session:
        run = session.get(ReconcileRun, report.run_id)
        assert run is not None
        assert consumed == run.finished_at  # with the run's outcome, after its last page committed
        newest_mark = session.scalar(
            select(func.max(ReconcileWatermark.updated_at)).where(ReconcileWatermark.facility_id == facility)
        )
        assert newest_mark is not None
        assert consumed >= newest_mark
        assert facility not in due_facilities(session)

    # consumed: the next run searches from its watermarks again
    world.transport.seen.clear()
    assert world.reconcile(facility).outcome == "complete"
    assert all(lower > window for lower in _searched_since(world, facility).values())

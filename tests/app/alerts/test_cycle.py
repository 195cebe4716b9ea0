"""The alerting cycle beat runs (``app.alerts.cycle.run_cycle``): feed health → alert → a page at a real
(fake) PagerDuty over HTTP, once, however many cycles see the condition; and the resolve once it is gone.
A database of its own: the cycle evaluates every facility it holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.alerts.cycle import CycleReport, evaluate_and_observe, run_cycle
from app.settings import get_settings
from tests.app.alerts.fake_sinks import FakeSink, fake_sink
from tests.conftest import engine_for, make_facility, migrated_database


@pytest.fixture
def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_id: str
) -> Iterator[tuple[sessionmaker[Session], FakeSink]]:
    with (
        fake_sink("pagerduty") as pagerduty,
        migrated_database(f"{run_id}_cycle") as url,
        engine_for(url) as engine,
    ):
        sinks = tmp_path / "sinks.yaml"
        sinks.write_text(
            yaml.safe_dump(
                {
                    "sinks": [
                        {
                            "name": "oncall",
                            "type": "pagerduty",
                            "routing_key": {"env": "EHRI_TEST_PD_KEY"},
                            "url": pagerduty.url + "/v2/enqueue",
                            "min_severity": "warning",
                        }
                    ]
                }
            )
        )
        monkeypatch.setenv("EHRI_TEST_PD_KEY", "pd-routing-key-0123456789abcdef")
        monkeypatch.setenv("EHRI_ALERT_SINKS_FILE", str(sinks))
        monkeypatch.setenv("EHRI_ALERT_RESOLVE_DELAY", "PT0S")
        get_settings.cache_clear()
        try:
            yield sessionmaker(engine, expire_on_commit=False), pagerduty
        finally:
            get_settings.cache_clear()


def test_a_dead_letter_pages_once_across_cycles_and_resolves_once_replayed(
    world: tuple[sessionmaker[Session], FakeSink],
) -> None:
    sessions, pagerduty = world
    now = datetime.now(UTC)
    with sessions.begin() as session:
        make_facility(session, "cycle-fac")
        session.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, received_at, done_at, status, reason, attempts,"
                " focus_type, focus_id)"
                " VALUES ('cycle-fac', 'k1', :at, :at, 'dead', 'ehr_http_4xx', 3, 'Patient', 'p1')"
            ),
            {"at": now - timedelta(minutes=2)},
        )
    with httpx.Client() as http:
        first = run_cycle(sessions, http)
        second = run_cycle(sessions, http)
        triggers = [r.json() for r in pagerduty.accepted() if r.json()["event_action"] == "trigger"]
        assert first.opened >= 1
        assert second.opened == 0
        dead = [t for t in triggers if t["payload"]["class"] == "dead_letters"]
        assert len(dead) == 1, triggers
        assert dead[0]["payload"]["component"] == "facility"
        with sessions.begin() as session:  # replayed: no dead letter any more
            session.execute(
                text("UPDATE inbox SET status = 'done', done_at = now() WHERE facility_id = 'cycle-fac'")
            )
        run_cycle(sessions, http)
        run_cycle(sessions, http)
    resolves = [r.json() for r in pagerduty.accepted() if r.json()["event_action"] == "resolve"]
    assert [r["dedup_key"] for r in resolves if r["dedup_key"] == dead[0]["dedup_key"]] == [
        dead[0]["dedup_key"]
    ]


def test_a_cycle_that_finds_another_evaluating_makes_no_transition_and_only_sends(
    world: tuple[sessionmaker[Session], FakeSink],
) -> None:
    # Two beats run cycles at once. Were the second to evaluate while the first's transaction is open, its
    # view and the first's would apply in either order: the first, which saw the dead letter still there,
    # could reopen what the second resolved on seeing it replayed (a second trigger).
    sessions, pagerduty = world
    with sessions.begin() as session:
        make_facility(session, "cycle-fac")
        session.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, received_at, done_at, status, reason, attempts,"
                " focus_type, focus_id)"
                " VALUES ('cycle-fac', 'k1', now(), now(), 'dead', 'ehr_http_4xx', 3, 'Patient', 'p1')"
            )
        )
    with httpx.Client() as http:
        assert run_cycle(sessions, http).opened == 1
        reports: list[CycleReport] = []
        second = threading.Thread(target=lambda: reports.append(run_cycle(sessions, http)))
        with sessions.begin() as first:  # a cycle mid-transaction: it evaluated, the dead letter held
            assert evaluate_and_observe(first, datetime.now(UTC)) is not None
            with sessions.begin() as session:  # replayed meanwhile
                session.execute(text("UPDATE inbox SET status = 'done' WHERE facility_id = 'cycle-fac'"))
            second.start()
            second.join(timeout=5)  # (a second evaluating would wait for the first's row locks)
        second.join(timeout=30)
        assert [(r.evaluated, r.resolved) for r in reports] == [(False, 0)]
        third = run_cycle(sessions, http)  # the next cycle sees the replay, and resolves
        assert (third.evaluated, third.resolved) == (True, 1)
        run_cycle(sessions, http)

    actions = [r.json()["event_action"] for r in pagerduty.accepted()]
    assert actions == ["trigger", "resolve"]
    with sessions() as session:
        assert session.scalar(text("SELECT reopened FROM alerts WHERE facility_id = 'cycle-fac'")) == 0

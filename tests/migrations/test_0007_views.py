"""Migration 0007 on a database that already holds data: readings are paired from the stored
Observations, summaries of the re-summarized types gain their new keys, and the downgrade restores the
previous views."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from app.db.migrate import alembic_config, upgrade
from app.fhir.normalize import normalize_resource
from tests.app.fhir.test_medications import NOW, VANCOMYCIN_IV
from tests.bp_cases import half
from tests.conftest import engine_for, migrated_database


def _before_0007(url: str) -> str:
    revision = ScriptDirectory.from_config(alembic_config(url)).get_revision("0007")
    assert revision is not None
    assert isinstance(revision.down_revision, str)
    return revision.down_revision


@pytest.fixture
def before() -> Iterator[tuple[str, Engine]]:
    """A database at the revision before 0007 (downgraded from head: 0007's downgrade on empty tables)."""
    with migrated_database(f"ehri_test_m7_{uuid.uuid4().hex[:8]}") as url:
        command.downgrade(alembic_config(url), _before_0007(url))
        with engine_for(url) as engine:
            yield url, engine


def _insert(engine: Engine, body: dict[str, Any], summary: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO resources (facility_id, resource_type, resource_id, content_hash, resource,"
                " fetched_at, normalized) VALUES ('fac-1', :t, :i, 'h', CAST(:r AS jsonb), now(),"
                " CAST(:n AS jsonb))"
            ),
            {"t": body["resourceType"], "i": body["id"], "r": json.dumps(body), "n": json.dumps(summary)},
        )


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO facilities (id, vendor, base_url, auth, webhook)"
                " VALUES ('fac-1', 'oracle', 'https://ehr.test/fhir', '{}', '{}')"
            )
        )
    for body in (
        half("SYS-1", "systolic", 128, effective="2026-02-20T14:05:00Z"),
        half("DIA-1", "diastolic", 82, effective="2026-02-20T14:05:00.000+00:00"),
    ):
        summary = normalize_resource(body, now=NOW).summary
        del summary["effective_key"]  # as summaries were before 0007
        _insert(engine, body, summary)
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "Medication/med-iv"},
    }
    old_request_summary = {"status": "active", "intent": "order", "medication_ref": "Medication/med-iv"}
    _insert(engine, request, old_request_summary)
    _insert(engine, VANCOMYCIN_IV, {"code": None, "system": None, "display": None})
    condition = {"resourceType": "Condition", "id": "c1", "onsetAge": {"value": 52, "unit": "years"}}
    _insert(engine, condition, {"onset": None})


def test_upgrade_pairs_stored_halves_and_resummarizes(before: tuple[str, Engine]) -> None:
    url, engine = before
    _seed(engine)
    upgrade(url, "0007")
    with engine.connect() as conn:
        readings = conn.execute(
            text("SELECT systolic, diastolic, source_ids FROM blood_pressure_readings")
        ).all()
        medication = conn.execute(text("SELECT medication_unresolved FROM medication_requests")).scalar_one()
        onset = conn.execute(text("SELECT onset, onset_type FROM conditions")).one()
    assert [(float(r.systolic), float(r.diastolic), sorted(r.source_ids)) for r in readings] == [
        (128.0, 82.0, ["DIA-1", "SYS-1"])
    ]
    assert medication == "ingredients_only"
    assert tuple(onset) == ("52 years", "Age")


def test_downgrade_restores_the_previous_views(before: tuple[str, Engine]) -> None:
    url, engine = before
    _seed(engine)
    upgrade(url, "0007")
    command.downgrade(alembic_config(url), _before_0007(url))
    with engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'observations'"
                " ORDER BY ordinal_position"
            )
        ).scalars()
        assert "status" not in list(columns)
        # the 0004 view again, with its bug: the instant written two ways is two lone halves
        assert conn.execute(text("SELECT count(*) FROM blood_pressure_readings")).scalar_one() == 2
        assert conn.execute(text("SELECT to_regclass('blood_pressure_pairs')")).scalar_one() is None

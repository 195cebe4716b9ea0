"""The ``blood_pressure_readings`` view, fed through the pipeline's one write path (``Pipeline.store``)
into real Postgres, against the same case table as the pure pairing (tests/bp_cases.py)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.fhir.normalize import pair_blood_pressure
from app.ingest.blood_pressure import refresh_all
from app.ingest.pipeline.observed import Observed
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Pipeline
from app.vendors.registry import adapter_for
from tests.bp_cases import CASES, ENCOUNTER, SUBJECT, Case, Reading, half, panel, reading
from tests.conftest import make_facility
from tests.ehr_mocks import make_client

T0 = datetime(2026, 2, 20, 15, 0, tzinfo=UTC)


def _pipeline(facility_id: str = "fac-1") -> Pipeline:
    never = httpx.MockTransport(lambda request: httpx.Response(500))  # store never reads the EHR
    return Pipeline(
        make_client(never, facility_id=facility_id), adapter_for("oracle"), ReferenceCache(), concurrency=1
    )


def _observed(body: dict[str, Any], *, facility_id: str = "fac-1", seconds: int = 0) -> Observed:
    summary = adapter_for("oracle").normalize(body, now=T0).summary
    at = T0 + timedelta(seconds=seconds)
    return Observed(facility_id, "Observation", str(body["id"]), body, at, summary=summary)


def _gone(obs_id: str, *, seconds: int) -> Observed:
    return Observed("fac-1", "Observation", obs_id, None, T0 + timedelta(seconds=seconds))


def _readings(db: Session | Any, facility_id: str = "fac-1") -> list[Reading]:
    rows = db.execute(
        text(
            "SELECT systolic, diastolic, unit, source_ids FROM blood_pressure_readings WHERE facility_id = :f"
        ),
        {"f": facility_id},
    ).all()

    def exact(value: Decimal | None) -> float | None:
        return None if value is None else float(value)

    return sorted(
        (Reading(exact(r.systolic), exact(r.diastolic), r.unit, frozenset(r.source_ids)) for r in rows),
        key=repr,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_view_follows_the_case_table(db: Session, case: Case) -> None:
    make_facility(db)
    _pipeline().store(db, [_observed(o) for o in case.observations])
    assert _readings(db) == sorted(case.readings, key=repr)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_halves_stored_one_write_at_a_time_give_the_same_readings(db: Session, case: Case) -> None:
    make_facility(db)
    pipeline = _pipeline()
    for observation in case.observations:
        pipeline.store(db, [_observed(observation)])
    assert _readings(db) == sorted(case.readings, key=repr)


def test_a_half_marked_entered_in_error_later_leaves_the_reading(db: Session) -> None:
    make_facility(db)
    pipeline = _pipeline()
    pipeline.store(db, [_observed(half("SYS-1", "systolic", 128)), _observed(half("DIA-1", "diastolic", 82))])
    corrected = half("DIA-1", "diastolic", 82, status="entered-in-error")
    corrected["meta"] = {"versionId": "2", "lastUpdated": "2026-02-20T16:00:00Z"}
    pipeline.store(db, [_observed(corrected, seconds=5)])
    assert _readings(db) == [reading(128, None, "SYS-1")]
    status = db.execute(text("SELECT status FROM observations WHERE observation_id = 'DIA-1'")).scalar_one()
    assert status == "entered-in-error"  # the flag is visible to consumers, not hidden


def test_a_deleted_half_leaves_the_reading(db: Session) -> None:
    make_facility(db)
    pipeline = _pipeline()
    pipeline.store(db, [_observed(half("SYS-1", "systolic", 128)), _observed(half("DIA-1", "diastolic", 82))])
    pipeline.store(db, [_gone("SYS-1", seconds=5)])
    assert _readings(db) == [reading(None, 82, "DIA-1")]


def test_a_half_moved_to_another_time_is_re_paired(db: Session) -> None:
    make_facility(db)
    pipeline = _pipeline()
    pipeline.store(db, [_observed(half("SYS-1", "systolic", 128)), _observed(half("DIA-1", "diastolic", 82))])
    moved = half("DIA-1", "diastolic", 82, effective="2026-02-20T14:35:00Z")
    moved["meta"] = {"versionId": "2", "lastUpdated": "2026-02-20T16:00:00Z"}
    pipeline.store(db, [_observed(moved, seconds=5)])
    assert _readings(db) == [reading(128, None, "SYS-1"), reading(None, 82, "DIA-1")]


def test_readings_keep_the_senders_exact_number(db: Session) -> None:
    make_facility(db)
    _pipeline().store(db, [_observed(panel("bp-1", 120.5, 80.25))])
    row = db.execute(text("SELECT systolic, diastolic FROM blood_pressure_readings")).one()
    assert (row.systolic, row.diastolic) == (Decimal("120.5"), Decimal("80.25"))


@pytest.fixture
def shared_facility(engine: Engine) -> Iterator[str]:
    facility_id = f"fac-{uuid.uuid4().hex[:6]}"
    with Session(engine) as session, session.begin():
        make_facility(session, facility_id)
    yield facility_id
    with engine.begin() as conn:
        for table in (
            "blood_pressure_members",
            "blood_pressure_pairs",
            "change_feed",
            "resource_history",
            "resources",
        ):
            conn.execute(text(f"DELETE FROM {table} WHERE facility_id = :f"), {"f": facility_id})
        conn.execute(text("DELETE FROM facilities WHERE id = :f"), {"f": facility_id})


def _blocked_by(engine: Engine, holder: int, done: threading.Event, deadline: float) -> bool:
    """Poll until another backend waits on a lock ``holder`` holds (or the other writer has finished
    without waiting), within ``deadline`` seconds."""
    until = time.monotonic() + deadline
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
    while time.monotonic() < until and not done.is_set():
        with engine.connect() as conn:
            if conn.execute(query, {"holder": holder}).scalar_one():
                return True
        done.wait(0.02)
    return False


def test_two_writers_storing_the_two_halves_at_once_give_one_reading(
    engine: Engine, shared_facility: str
) -> None:
    sys_half = _observed(half("SYS-1", "systolic", 128), facility_id=shared_facility)
    dia_half = _observed(half("DIA-1", "diastolic", 82), facility_id=shared_facility)
    done = threading.Event()
    errors: list[BaseException] = []

    def second_writer() -> None:
        try:
            with Session(engine) as session, session.begin():
                _pipeline(shared_facility).store(session, [dia_half])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    with Session(engine) as first, first.begin():
        _pipeline(shared_facility).store(first, [sys_half])  # holds the subject's pairing lock
        holder = first.execute(text("SELECT pg_backend_pid()")).scalar_one()
        other = threading.Thread(target=second_writer)
        other.start()
        waited = _blocked_by(engine, holder, done, deadline=5.0)
    other.join(timeout=10)
    assert not errors
    assert waited, "the second writer paired without waiting for the first"
    with engine.connect() as conn:
        assert _readings(conn, shared_facility) == [reading(128, 82, "SYS-1", "DIA-1")]


def test_a_half_recoded_as_something_else_leaves_its_reading(db: Session) -> None:
    make_facility(db)
    pipeline = _pipeline()
    pipeline.store(db, [_observed(half("SYS-1", "systolic", 128)), _observed(half("DIA-1", "diastolic", 82))])
    recoded = half("DIA-1", "diastolic", 82)
    recoded["code"] = {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]}
    recoded["meta"] = {"versionId": "2", "lastUpdated": "2026-02-20T16:00:00Z"}
    pipeline.store(db, [_observed(recoded, seconds=5)])
    assert _readings(db) == [reading(128, None, "SYS-1")]


INSTANTS = (
    "2026-02-20T14:05:00Z",
    "2026-02-20T14:05:00.000+00:00",
    "2026-02-20T09:05:00-05:00",
    "2026-02-20T14:35:00Z",
    "2026-02-20",
)


def _random_observation(rng: random.Random, id_: str) -> dict[str, Any]:
    status = rng.choice(("final", "final", "final", "amended", "entered-in-error", "cancelled"))
    effective = rng.choice(INSTANTS)
    if rng.random() < 0.25:
        body = panel(id_, rng.randint(90, 180), rng.randint(50, 110), status=status, effective=effective)
    else:
        role = rng.choice(("systolic", "diastolic"))
        body = half(
            id_,
            role,
            rng.randint(50, 180),
            status=status,
            effective=effective,
            encounter=rng.choice((ENCOUNTER, "Encounter/other", None)),
        )
    body["subject"] = {"reference": rng.choice((SUBJECT, "Patient/other"))}
    return body


def _expected(bodies: list[dict[str, Any]]) -> list[Reading]:
    def exact(value: object) -> float | None:
        return None if value is None else float(str(value))

    return sorted(
        (
            Reading(exact(r["systolic"]), exact(r["diastolic"]), r["unit"], frozenset(r["source_ids"]))
            for r in pair_blood_pressure(bodies)
        ),
        key=repr,
    )


@pytest.mark.parametrize("seed", range(40))
def test_incremental_pairing_equals_pairing_everything_at_once(db: Session, seed: int) -> None:
    """Random writes, rewrites and deletions over several writes: the view ends equal to the pure pairing
    of what is finally live."""
    rng = random.Random(seed)
    make_facility(db)
    pipeline = _pipeline()
    live: dict[str, dict[str, Any]] = {}
    gone: set[str] = set()  # never re-created: revival rules are the store's business, not pairing's
    for step in range(1, rng.randint(2, 6) + 1):
        batch: list[Observed] = []
        candidates = [f"obs-{n}" for n in range(8) if f"obs-{n}" not in gone]
        for id_ in rng.sample(candidates, min(len(candidates), rng.randint(1, 4))):
            if id_ in live and rng.random() < 0.2:
                batch.append(_gone(id_, seconds=step))
                del live[id_]
                gone.add(id_)
                continue
            body = _random_observation(rng, id_)
            body["meta"] = {"versionId": str(step), "lastUpdated": f"2026-02-20T16:00:{step:02d}Z"}
            batch.append(_observed(body, seconds=step))
            live[id_] = body
        pipeline.store(db, batch)
    assert _readings(db) == _expected(list(live.values()))


def test_the_backfill_re_pairs_everything_in_bounded_chunks(db: Session) -> None:
    make_facility(db)
    case = next(c for c in CASES if c.name == "duplicate_halves_are_two_readings_not_four")
    other = [half("SYS-9", "systolic", 140, effective="2026-02-21T08:00:00Z")]
    _pipeline().store(db, [_observed(o) for o in [*case.observations, *other]])
    db.execute(text("DELETE FROM blood_pressure_pairs"))
    db.execute(text("DELETE FROM blood_pressure_members"))
    assert refresh_all(db, pair_blood_pressure, chunk=1) == 3
    assert _readings(db) == sorted([*case.readings, reading(140, None, "SYS-9")], key=repr)

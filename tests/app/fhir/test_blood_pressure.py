"""The pure pairing rule against the shared case table (the view is driven by the same table in
tests/app/ingest/test_blood_pressure_readings.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.fhir.normalize import pair_blood_pressure
from tests.bp_cases import CASES, Case, Reading


def _as_reading(found: dict[str, object]) -> Reading:
    def exact(value: object) -> float | None:
        return None if value is None else float(Decimal(str(value)))

    ids = found["source_ids"]
    assert isinstance(ids, list)
    return Reading(exact(found["systolic"]), exact(found["diastolic"]), found["unit"], frozenset(ids))  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pairing_follows_the_case_table(case: Case) -> None:
    found = [_as_reading(r) for r in pair_blood_pressure(case.observations)]
    assert sorted(found, key=repr) == sorted(case.readings, key=repr)

"""Condition.onset[x] of every R4 type is kept: as text in ``onset`` and in the typed fields the type has.
Shapes from the FHIR R4 Condition examples (example, example2, f201, f205...)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.fhir.normalize import normalize_resource

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"
KEYS = (
    "onset",
    "onset_type",
    "onset_start",
    "onset_end",
    "onset_age_low",
    "onset_age_high",
    "onset_age_unit",
)


def _condition(**onset: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "example",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "39065001", "display": "Burn of ear"}]
        },
        "subject": {"reference": "Patient/example"},
        **onset,
    }


def _onset(**onset: Any) -> tuple[Any, ...]:
    summary = normalize_resource(_condition(**onset), now=NOW).summary
    return tuple(summary[k] for k in KEYS)


@pytest.mark.parametrize(
    ("onset", "expected"),
    [
        ({"onsetDateTime": "2012-05-24"}, ("2012-05-24", "dateTime", "2012-05-24", None, None, None, None)),
        (
            {"onsetAge": {"value": 52, "unit": "years", "system": UCUM, "code": "a"}},
            ("52 years", "Age", None, None, 52, 52, "a"),
        ),
        (
            {"onsetPeriod": {"start": "2013-03-11", "end": "2013-03-20"}},
            ("2013-03-11", "Period", "2013-03-11", "2013-03-20", None, None, None),
        ),
        (
            {"onsetPeriod": {"end": "2013-03-20"}},
            ("<= 2013-03-20", "Period", None, "2013-03-20", None, None, None),
        ),
        (
            {
                "onsetRange": {
                    "low": {"value": 50, "unit": "yr", "system": UCUM, "code": "a"},
                    "high": {"value": 60, "unit": "yr", "system": UCUM, "code": "a"},
                }
            },
            ("50 yr to 60 yr", "Range", None, None, 50, 60, "a"),
        ),
        (
            {"onsetRange": {"low": {"value": 18, "unit": "mo", "system": UCUM, "code": "mo"}}},
            (">= 18 mo", "Range", None, None, 18, None, "mo"),
        ),
        (
            {"onsetString": "approximately November 2012"},
            ("approximately November 2012", "string") + (None,) * 5,
        ),
        ({}, (None,) * 7),
    ],
    ids=["dateTime", "Age", "Period", "open_Period", "Range", "open_Range", "string", "absent"],
)
def test_onset_of_every_type_is_kept(onset: dict[str, Any], expected: tuple[Any, ...]) -> None:
    assert _onset(**onset) == expected


def test_an_age_without_a_ucum_code_keeps_its_unit() -> None:
    assert _onset(onsetAge={"value": 7, "unit": "years old"})[:2] == ("7 years old", "Age")
    assert _onset(onsetAge={"value": 7, "unit": "years old"})[6] == "years old"

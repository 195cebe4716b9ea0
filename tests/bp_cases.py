"""One table of blood-pressure pairing cases, driven through both places the rule is visible: the pure
Python pairing (``app.fhir.normalize.pair_blood_pressure``) and the ``blood_pressure_readings`` view that
consumers read (STYLE.md: when a rule must exist twice, one test drives both).

Shapes follow the FHIR R4 ``blood-pressure`` example (US Core vital signs: a panel 85354-9 with 8480-6 and
8462-4 components in UCUM ``mm[Hg]``) and EHR-FACTS.md §7 (Oracle's split halves with a proprietary code
first, times written with or without milliseconds and offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
MILLENNIUM = "https://fhir.cerner.com/ec2458f2-1e24-41c8-b71b-0e701af7583d/codeSet/72"
SUBJECT = "Patient/12724066"
ENCOUNTER = "Encounter/97953477"
AT = "2026-02-20T14:05:00Z"
VITAL_SIGNS = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
                "display": "Vital Signs",
            }
        ]
    }
]


def mmhg(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}


def panel(
    id_: str,
    systolic: float,
    diastolic: float,
    *,
    status: str = "final",
    effective: str = AT,
) -> dict[str, Any]:
    def component(code: str, display: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "valueQuantity": mmhg(value),
        }

    return {
        "resourceType": "Observation",
        "id": id_,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "status": status,
        "category": VITAL_SIGNS,
        "code": {
            "coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}],
            "text": "Blood pressure systolic & diastolic",
        },
        "subject": {"reference": SUBJECT},
        "encounter": {"reference": ENCOUNTER},
        "effectiveDateTime": effective,
        "performer": [{"reference": "Practitioner/example"}],
        "component": [
            component("8480-6", "Systolic blood pressure", systolic),
            component("8462-4", "Diastolic blood pressure", diastolic),
        ],
    }


def half(
    id_: str,
    role: str,
    value: float,
    *,
    status: str = "final",
    effective: str = AT,
    encounter: str | None = ENCOUNTER,
    quantity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An Oracle-style lone systolic or diastolic Observation: Millennium code first, LOINC second."""
    loinc, display = ("8480-6", "Systolic") if role == "systolic" else ("8462-4", "Diastolic")
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id_,
        "status": status,
        "category": VITAL_SIGNS,
        "code": {
            "coding": [
                {"system": MILLENNIUM, "code": "703501" if role == "systolic" else "703516"},
                {"system": LOINC, "code": loinc, "display": f"{display} blood pressure"},
            ],
            "text": f"{display} Blood Pressure",
        },
        "subject": {"reference": SUBJECT},
        "effectiveDateTime": effective,
        "issued": "2026-02-20T14:06:12.000Z",
        "valueQuantity": quantity if quantity is not None else mmhg(value),
    }
    if encounter is not None:
        body["encounter"] = {"reference": encounter}
    return body


@dataclass(frozen=True)
class Reading:
    """What a case expects of one reading; ``source_ids`` compared as a set (the view has no order)."""

    systolic: float | None
    diastolic: float | None
    unit: str | None
    source_ids: frozenset[str]


def reading(systolic: float | None, diastolic: float | None, *ids: str, unit: str = "mm[Hg]") -> Reading:
    return Reading(systolic, diastolic, unit, frozenset(ids))


@dataclass(frozen=True)
class Case:
    name: str
    observations: list[dict[str, Any]]
    readings: list[Reading]


CASES = [
    Case("us_core_panel", [panel("bp-1", 107, 60)], [reading(107, 60, "bp-1")]),
    Case(
        "split_halves_pair",
        [half("SYS-1", "systolic", 128), half("DIA-1", "diastolic", 82)],
        [reading(128, 82, "SYS-1", "DIA-1")],
    ),
    Case("lone_half_is_kept", [half("SYS-1", "systolic", 128)], [reading(128, None, "SYS-1")]),
    Case(
        "entered_in_error_half_is_no_reading",
        [half("SYS-1", "systolic", 128), half("DIA-1", "diastolic", 82, status="entered-in-error")],
        [reading(128, None, "SYS-1")],
    ),
    Case("cancelled_panel_is_no_reading", [panel("bp-1", 107, 60, status="cancelled")], []),
    Case("entered_in_error_panel_is_no_reading", [panel("bp-1", 107, 60, status="entered-in-error")], []),
    Case(
        "duplicate_halves_are_two_readings_not_four",
        [
            half("SYS-2", "systolic", 131),
            half("DIA-1", "diastolic", 82),
            half("SYS-1", "systolic", 128),
            half("DIA-2", "diastolic", 85),
        ],
        [reading(128, 82, "SYS-1", "DIA-1"), reading(131, 85, "SYS-2", "DIA-2")],
    ),
    Case(
        "same_instant_written_two_ways_pairs",
        [
            half("SYS-1", "systolic", 128, effective="2026-02-20T14:05:00Z"),
            half("DIA-1", "diastolic", 82, effective="2026-02-20T14:05:00.000+00:00"),
        ],
        [reading(128, 82, "SYS-1", "DIA-1")],
    ),
    Case(
        "same_instant_in_another_offset_pairs",
        [
            half("SYS-1", "systolic", 128, effective="2026-02-20T14:05:00.000Z"),
            half("DIA-1", "diastolic", 82, effective="2026-02-20T09:05:00-05:00"),
        ],
        [reading(128, 82, "SYS-1", "DIA-1")],
    ),
    Case(
        "different_times_do_not_pair",
        [
            half("SYS-1", "systolic", 128),
            half("DIA-1", "diastolic", 82, effective="2026-02-20T15:05:00Z"),
        ],
        [reading(128, None, "SYS-1"), reading(None, 82, "DIA-1")],
    ),
    Case(
        "different_encounters_do_not_pair",
        [
            half("SYS-1", "systolic", 128),
            half("DIA-1", "diastolic", 82, encounter="Encounter/other"),
        ],
        [reading(128, None, "SYS-1"), reading(None, 82, "DIA-1")],
    ),
    Case(
        "halves_of_a_panel_are_the_same_measurement",
        [panel("SYS-1-DIA-1", 128, 82), half("SYS-1", "systolic", 128), half("DIA-1", "diastolic", 82)],
        [reading(128, 82, "SYS-1-DIA-1", "SYS-1", "DIA-1")],
    ),
    Case(
        "unit_is_the_senders_not_a_constant",
        [
            half(
                "SYS-1",
                "systolic",
                17.1,
                quantity={"value": 17.1, "unit": "kPa", "system": UCUM, "code": "kPa"},
            ),
            half(
                "DIA-1",
                "diastolic",
                10.9,
                quantity={"value": 10.9, "unit": "kPa", "system": UCUM, "code": "kPa"},
            ),
        ],
        [reading(17.1, 10.9, "SYS-1", "DIA-1", unit="kPa")],
    ),
    Case(
        "a_plain_unit_gets_its_ucum_code",
        [
            half("SYS-1", "systolic", 128, quantity={"value": 128, "unit": "mmHg"}),
            half("DIA-1", "diastolic", 82, quantity={"value": 82, "unit": "mmHg"}),
        ],
        [reading(128, 82, "SYS-1", "DIA-1")],
    ),
    Case(
        "date_only_times_pair_as_sent",
        [
            half("SYS-1", "systolic", 128, effective="2026-02-20"),
            half("DIA-1", "diastolic", 82, effective="2026-02-20"),
        ],
        [reading(128, 82, "SYS-1", "DIA-1")],
    ),
]

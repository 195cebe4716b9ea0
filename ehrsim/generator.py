"""Seeded clinical content and the change mix of simulated activity.

Content depends only on the seed and the sequence of calls (timestamps come from the store), so two
simulators with the same seed produce the same resources and ids.
"""

from __future__ import annotations

import random
import time
from typing import Any

from ehrsim.store import Change, ResourceStore

RESOURCE_TYPES = ("Patient", "Observation", "Condition")

_GIVEN = ("Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonah", "Kai", "Lena")
_FAMILY = ("Alvarez", "Brown", "Chen", "Diallo", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jensen")
# (LOINC, display, UCUM unit, low, high, decimals)
_Vital = tuple[str, str, str, float, float, int]
_VITALS: tuple[_Vital, ...] = (
    ("8867-4", "Heart rate", "/min", 48, 130, 0),
    ("9279-1", "Respiratory rate", "/min", 10, 28, 0),
    ("8310-5", "Body temperature", "Cel", 35.8, 39.8, 1),
    ("29463-7", "Body weight", "kg", 3.0, 140.0, 1),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 86, 100, 0),
)
_CONDITIONS = (
    ("38341003", "Hypertensive disorder"),
    ("44054006", "Diabetes mellitus type 2"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive lung disease"),
    ("55822004", "Hyperlipidemia"),
    ("35489007", "Depressive disorder"),
)
_VITAL_SIGNS = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs",
        }
    ]
}
_PROBLEM_LIST = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
            "code": "problem-list-item",
        }
    ]
}
_UCUM = "http://unitsofmeasure.org"
_BASE_S = 1_735_689_600  # 2025-01-01T00:00:00Z: clinical dates are seeded offsets from here


class _Bag:
    """A set with O(1) add, remove and uniform random choice."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []
        self._pos: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: tuple[str, str]) -> None:
        self._pos[item] = len(self._items)
        self._items.append(item)

    def remove(self, item: tuple[str, str]) -> None:
        pos = self._pos.pop(item)
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    def choice(self, rng: random.Random) -> tuple[str, str]:
        return self._items[rng.randrange(len(self._items))]


class Generator:
    def __init__(self, store: ResourceStore, seed: int, facility_id: str) -> None:
        self._store = store
        self._rng = random.Random(seed)  # noqa: S311 - simulated content, not security
        self._mrn_system = f"http://ehrsim.example.org/{facility_id}/mrn"
        self._counters = dict.fromkeys(RESOURCE_TYPES, 0)
        self._patients: list[str] = []
        self._live = _Bag()  # every non-deleted resource
        self._deletable = _Bag()  # non-deleted, non-Patient

    def populate(self, patients: int) -> list[Change]:
        """The chart as it stands before the simulation starts: patients with a few results each."""
        changes: list[Change] = []
        for _ in range(patients):
            patient = self._create_patient()
            changes.append(patient)
            changes += [self._create_observation(patient.id) for _ in range(self._rng.randint(2, 4))]
            changes += [self._create_condition(patient.id) for _ in range(self._rng.randint(0, 2))]
        return changes

    def step(self) -> Change:
        """One change: ~30% creates, ~60% updates, ~10% deletes (never of a Patient)."""
        roll = self._rng.random()
        if roll < 0.6 and self._live:
            return self._update(*self._live.choice(self._rng))
        if roll < 0.7 and self._deletable:
            return self._delete(*self._deletable.choice(self._rng))
        roll = self._rng.random()
        if roll < 0.1 or not self._patients:
            return self._create_patient()
        patient = self._patients[self._rng.randrange(len(self._patients))]
        return self._create_observation(patient) if roll < 0.7 else self._create_condition(patient)

    # -- creates -----------------------------------------------------------------------------------

    def _new_id(self, resource_type: str, prefix: str) -> str:
        self._counters[resource_type] += 1
        return f"{prefix}-{self._counters[resource_type]}"

    def _create(self, resource_type: str, id_: str, content: dict[str, Any]) -> Change:
        change = self._store.put(resource_type, id_, content)
        self._live.add((resource_type, id_))
        if resource_type != "Patient":
            self._deletable.add((resource_type, id_))
        return change

    def _create_patient(self) -> Change:
        id_ = self._new_id("Patient", "pat")
        self._patients.append(id_)
        rng = self._rng
        content = {
            "identifier": [
                {
                    "use": "usual",
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                    "system": self._mrn_system,
                    "value": f"M{self._counters['Patient']:07d}",
                }
            ],
            "active": True,
            "name": [{"use": "official", "family": rng.choice(_FAMILY), "given": [rng.choice(_GIVEN)]}],
            "telecom": [{"system": "phone", "value": self._phone(), "use": "home"}],
            "gender": rng.choice(("female", "male", "other", "unknown")),
            "birthDate": self._date(-rng.randrange(365 * 90), "%Y-%m-%d"),
        }
        return self._create("Patient", id_, content)

    def _create_observation(self, patient: str) -> Change:
        code, display, *_ = vital = self._rng.choice(_VITALS)
        content = {
            "status": "final",
            "category": [_VITAL_SIGNS],
            "code": {
                "coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": self._date(self._rng.randrange(365), "%Y-%m-%dT%H:%M:00Z"),
            "valueQuantity": self._quantity(vital),
        }
        return self._create("Observation", self._new_id("Observation", "obs"), content)

    def _create_condition(self, patient: str) -> Change:
        code, display = self._rng.choice(_CONDITIONS)
        content = {
            "clinicalStatus": _clinical_status("active"),
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "confirmed",
                    }
                ]
            },
            "category": [_PROBLEM_LIST],
            "code": {
                "coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{patient}"},
            "recordedDate": self._date(self._rng.randrange(365), "%Y-%m-%dT%H:%M:00Z"),
        }
        return self._create("Condition", self._new_id("Condition", "cond"), content)

    # -- updates and deletes ---------------------------------------------------------------------

    def _update(self, resource_type: str, id_: str) -> Change:
        record = self._store.get(resource_type, id_)
        assert record is not None  # the bag only holds stored resources
        content = {k: v for k, v in record.resource.items() if k not in ("resourceType", "id", "meta")}
        if resource_type == "Patient":
            content["telecom"] = [{"system": "phone", "value": self._phone(), "use": "home"}]
        elif resource_type == "Observation":
            code = content["code"]["coding"][0]["code"]
            content["status"] = "amended"
            content["valueQuantity"] = self._quantity(next(v for v in _VITALS if v[0] == code))
        else:
            active = content["clinicalStatus"]["coding"][0]["code"] == "active"
            content["clinicalStatus"] = _clinical_status("resolved" if active else "active")
            if active:
                content["abatementDateTime"] = self._date(365 + self._rng.randrange(30), "%Y-%m-%d")
            else:
                content.pop("abatementDateTime", None)
        return self._store.put(resource_type, id_, content)

    def _delete(self, resource_type: str, id_: str) -> Change:
        self._live.remove((resource_type, id_))
        self._deletable.remove((resource_type, id_))
        return self._store.delete(resource_type, id_)

    # -- values ------------------------------------------------------------------------------------

    def _quantity(self, vital: _Vital) -> dict[str, Any]:
        _, _, unit, low, high, decimals = vital
        value: float = round(self._rng.uniform(low, high), decimals)
        return {"value": int(value) if decimals == 0 else value, "unit": unit, "system": _UCUM, "code": unit}

    def _phone(self) -> str:
        return f"555-{self._rng.randrange(10_000):04d}"

    def _date(self, days: int, fmt: str) -> str:
        return time.strftime(fmt, time.gmtime(_BASE_S + days * 86_400 + self._rng.randrange(86_400)))


def _clinical_status(code: str) -> dict[str, Any]:
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": code}]}

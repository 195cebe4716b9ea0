"""Seeded clinical content and the change mix of simulated activity.

Content depends only on the seed and the sequence of calls (timestamps come from the store), so two
simulators with the same seed produce the same resources and ids.

What activity records carries the store's time as its admin date (``RECORDED_AT``: an Observation's
``issued``, a Condition's ``recordedDate``...), as a record entered now does: what a created-date search
finds. The seeded chart keeps its historic dates.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from ehrsim.profiles import BASE_TYPES, Profile, get_profile
from ehrsim.store import Change, ResourceStore

RESOURCE_TYPES = BASE_TYPES

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
# (LOINC, display, unit, UCUM code or None when the unit is not UCUM, low, high, decimals)
_Lab = tuple[str, str, str, str | None, float, float, int]
_LABS: tuple[_Lab, ...] = (
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 60, 250, 0),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL", 8, 18, 1),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0.4, 3.0, 2),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%", 4.5, 11, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood", "K/uL", None, 3, 15, 1),  # a unit with no UCUM code
)
_MEDICATIONS = (
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("860975", "metformin hydrochloride 500 MG Oral Tablet"),
    ("617314", "atorvastatin 10 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
)
_ALLERGENS = (
    ("7980", "Penicillin G"),
    ("2670", "Codeine"),
    ("1191", "Aspirin"),
    ("10831", "Sulfamethoxazole"),
)
_NICKNAMES = {"Elena": "Lena", "Jonah": "Jo", "Grace": "Gracie", "Farid": "Fari", "Ana": "Annie"}
_LAB_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]
}
_BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
_SYSTOLIC = ("8480-6", "Systolic blood pressure")
_DIASTOLIC = ("8462-4", "Diastolic blood pressure")
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_UCUM = "http://unitsofmeasure.org"
#: The admin date element of each type, set to the time activity records it (date-only elements: its day).
RECORDED_AT = {
    "Observation": "issued",
    "Condition": "recordedDate",
    "MedicationRequest": "authoredOn",
    "AllergyIntolerance": "recordedDate",
    "DocumentReference": "date",
}
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
    """Content shaped by the profile: its resource types, Observation kinds (vital signs, blood pressure
    as a panel or as separate readings, labs with or without UCUM codes), name variants, medication
    shapes and padded identifiers. A change that needs two resources (a split blood pressure, a
    medication request that references its Medication) yields them from two consecutive ``step()``s."""

    def __init__(
        self, store: ResourceStore, seed: int, facility_id: str, profile: Profile | None = None
    ) -> None:
        self._store = store
        self._profile = profile or get_profile("generic")
        self._types = set(self._profile.resource_types)
        self._rng = random.Random(seed)  # noqa: S311 - simulated content, not security
        self._mrn_system = mrn_system(self._profile, facility_id)
        self._counters = dict.fromkeys(self._profile.resource_types, 0)
        self._patients: list[str] = []
        self._live = _Bag()  # every non-deleted resource
        self._deletable = _Bag()  # non-deleted, non-Patient
        self._follow_ups: deque[Change] = deque()  # the second half of a two-resource change
        self._populating = False  # the seeded chart: historic admin dates

    def populate(self, patients: int) -> list[Change]:
        """The chart as it stands before the simulation starts: patients with a few results each."""
        self._populating = True
        try:
            return self._populate(patients)
        finally:
            self._populating = False

    def _populate(self, patients: int) -> list[Change]:
        changes: list[Change] = []
        for _ in range(patients):
            patient = self._create_patient()
            changes.append(patient)
            changes += [self._create_observation(patient.id) for _ in range(self._rng.randint(2, 4))]
            changes += [self._create_condition(patient.id) for _ in range(self._rng.randint(0, 2))]
            if len(self._types) > len(RESOURCE_TYPES):
                changes += [self._create_other(patient.id) for _ in range(self._rng.randint(1, 3))]
            changes += self._follow_ups
            self._follow_ups.clear()
        return changes

    def step(self) -> Change:
        """One change: ~30% creates, ~60% updates, ~10% deletes (never of a Patient)."""
        if self._follow_ups:
            return self._follow_ups.popleft()
        roll = self._rng.random()
        if roll < 0.6 and self._live:
            return self._update(*self._live.choice(self._rng))
        if roll < 0.7 and self._deletable:
            return self._delete(*self._deletable.choice(self._rng))
        roll = self._rng.random()
        if roll < 0.1 or not self._patients:
            return self._create_patient()
        patient = self._patients[self._rng.randrange(len(self._patients))]
        if roll < 0.7:
            create = self._create_observation
        elif roll < 0.85 or len(self._types) == len(RESOURCE_TYPES):
            create = self._create_condition
        else:
            create = self._create_other
        return create(patient)

    def step_adt(self) -> Change:
        """One Patient or Encounter change, the mix of an ADT feed: ~10% registrations, ~30% demographic
        updates, ~30% admissions (an ``in-progress`` Encounter), ~25% discharges or cancels (an update of
        an open or finished Encounter) and ~5% deleted Encounters."""
        roll = self._rng.random()
        encounters = [r.id for r in self._store.records_of("Encounter") if not r.deleted]
        if roll < 0.1 or not self._patients:
            return self._create_patient()
        if roll < 0.4:
            return self._update("Patient", self._patients[self._rng.randrange(len(self._patients))])
        if roll < 0.7 or not encounters:
            patient = self._patients[self._rng.randrange(len(self._patients))]
            return self._create_encounter(patient, status="in-progress")
        encounter = encounters[self._rng.randrange(len(encounters))]
        if roll < 0.95:
            return self._update("Encounter", encounter)
        return self._delete("Encounter", encounter)

    # -- creates -----------------------------------------------------------------------------------

    def _new_id(self, resource_type: str, prefix: str) -> str:
        self._counters[resource_type] += 1
        return self._profile.id_template.format(prefix=prefix, n=self._counters[resource_type])

    def _create(self, resource_type: str, id_: str, content: dict[str, Any]) -> Change:
        element = RECORDED_AT.get(resource_type)
        if element is not None and not self._populating:
            now = time.gmtime(self._store.clock())
            date_only = len(str(content.get(element, ""))) == len("2025-01-01")
            content[element] = time.strftime("%Y-%m-%d" if date_only else "%Y-%m-%dT%H:%M:%SZ", now)
        change = self._store.put(resource_type, id_, content)
        self._live.add((resource_type, id_))
        if resource_type != "Patient":
            self._deletable.add((resource_type, id_))
        return change

    def _create_patient(self) -> Change:
        id_ = self._new_id("Patient", "pat")
        self._patients.append(id_)
        rng = self._rng
        mrn = f"M{self._counters['Patient']:07d}"
        if self._profile.padded_identifiers:
            mrn = f"  {mrn}   "  # Epic pads identifier values: consumers must trim
        family, given = rng.choice(_FAMILY), rng.choice(_GIVEN)
        mrn_type: dict[str, Any] = (
            {"text": self._profile.mrn_type_text}
            if self._profile.mrn_type_text is not None  # Epic: typed by text only ("EPI")
            else {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
        )
        content = {
            "identifier": [{"use": "usual", "type": mrn_type, "system": self._mrn_system, "value": mrn}],
            "active": True,
            "name": self._names(family, given),
            "telecom": [{"system": "phone", "value": self._phone(), "use": "home"}],
            "gender": rng.choice(("female", "male", "other", "unknown")),
            "birthDate": self._date(-rng.randrange(365 * 90), "%Y-%m-%d"),
        }
        return self._create("Patient", id_, content)

    def _create_observation(self, patient: str) -> Change:
        kind = self._rng.choice(self._profile.observations)
        if kind == "blood-pressure":
            return self._create_blood_pressure(patient)
        if kind == "lab":
            return self._create_lab(patient)
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
        recorded = self._date(self._rng.randrange(365), "%Y-%m-%dT%H:%M:00Z")
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
            "onsetDateTime": recorded[:10],  # date-only, as often seen
            "recordedDate": recorded,
        }
        return self._create("Condition", self._new_id("Condition", "cond"), content)

    def _create_blood_pressure(self, patient: str) -> Change:
        """A US Core panel, or (``split``, and half the time with ``mixed``) two unpaired readings with the
        same subject, time and encounter, as Oracle returns them."""
        rng = self._rng
        systolic, diastolic = rng.randint(95, 180), rng.randint(55, 110)
        common: dict[str, Any] = {
            "status": "final",
            "category": [_VITAL_SIGNS],
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": self._date(rng.randrange(365), "%Y-%m-%dT%H:%M:00Z"),
        }
        style = self._profile.blood_pressure
        if style == "panel" or (style == "mixed" and rng.random() < 0.5):
            content = {
                **common,
                "code": _code("http://loinc.org", *_BP_PANEL),
                "component": [
                    {"code": _code("http://loinc.org", *_SYSTOLIC), "valueQuantity": _mmhg(systolic)},
                    {"code": _code("http://loinc.org", *_DIASTOLIC), "valueQuantity": _mmhg(diastolic)},
                ],
            }
            return self._create("Observation", self._new_id("Observation", "obs"), content)
        first = self._create(
            "Observation",
            self._new_id("Observation", "obs"),
            {**common, "code": _code("http://loinc.org", *_SYSTOLIC), "valueQuantity": _mmhg(systolic)},
        )
        self._follow_ups.append(
            self._create(
                "Observation",
                self._new_id("Observation", "obs"),
                {**common, "code": _code("http://loinc.org", *_DIASTOLIC), "valueQuantity": _mmhg(diastolic)},
            )
        )
        return first

    def _create_lab(self, patient: str) -> Change:
        code, display, unit, ucum, low, high, decimals = self._rng.choice(_LABS)
        value: float = round(self._rng.uniform(low, high), decimals)
        quantity: dict[str, Any] = {"value": value, "unit": unit}
        if ucum is not None and self._profile.lab_ucum:
            quantity |= {"system": _UCUM, "code": ucum}
        content = {
            "status": "final",
            "category": [_LAB_CATEGORY],
            "code": _code("http://loinc.org", code, display),
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": self._date(self._rng.randrange(365), "%Y-%m-%dT%H:%M:00Z"),
            "issued": self._date(self._rng.randrange(365), "%Y-%m-%dT%H:%M:00Z"),
            "valueQuantity": quantity,
        }
        return self._create("Observation", self._new_id("Observation", "obs"), content)

    def _create_other(self, patient: str) -> Change:
        """One of the profile's further types: encounters, medication requests, allergies, documents."""
        makers = {
            "Encounter": self._create_encounter,
            "MedicationRequest": self._create_medication_request,
            "AllergyIntolerance": self._create_allergy,
            "DocumentReference": self._create_document,
        }
        choices = [make for rtype, make in makers.items() if rtype in self._types]
        return self._rng.choice(choices)(patient) if choices else self._create_condition(patient)

    def _create_encounter(self, patient: str, *, status: str = "finished") -> Change:
        start = self._rng.randrange(365)
        content = {
            "status": status,
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": self._rng.choice(("AMB", "IMP", "EMER")),
            },
            "subject": {"reference": f"Patient/{patient}"},
            "period": {
                "start": self._date(start, "%Y-%m-%dT%H:%M:00Z"),
                "end": self._date(start + 1, "%Y-%m-%dT%H:%M:00Z"),
            },
        }
        return self._create("Encounter", self._new_id("Encounter", "enc"), content)

    def _create_medication_request(self, patient: str) -> Change:
        """In the profile's medication shape: a reference to a separate Medication (Epic; the Medication
        is created first), a codeable concept (Oracle, RxNorm), or a contained ``#id`` Medication."""
        code, display = self._rng.choice(_MEDICATIONS)
        concept = _code(_RXNORM, code, display)
        content: dict[str, Any] = {
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "authoredOn": self._date(self._rng.randrange(365), "%Y-%m-%d"),  # date-only, as seen
        }
        shape = self._rng.choice(self._profile.medication)
        if shape == "reference" and "Medication" in self._types:
            medication = self._create("Medication", self._new_id("Medication", "med"), {"code": concept})
            content["medicationReference"] = {"reference": f"Medication/{medication.id}", "display": display}
            request = self._create("MedicationRequest", self._new_id("MedicationRequest", "medrx"), content)
            self._follow_ups.append(request)
            return medication
        if shape == "contained":
            content["contained"] = [{"resourceType": "Medication", "id": "med1", "code": concept}]
            content["medicationReference"] = {"reference": "#med1"}
        else:
            content["medicationCodeableConcept"] = concept
        return self._create("MedicationRequest", self._new_id("MedicationRequest", "medrx"), content)

    def _create_allergy(self, patient: str) -> Change:
        code, display = self._rng.choice(_ALLERGENS)
        content = {
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": _code(_RXNORM, code, display),
            "patient": {"reference": f"Patient/{patient}"},
            "recordedDate": self._date(self._rng.randrange(365), "%Y-%m-%d"),
        }
        return self._create("AllergyIntolerance", self._new_id("AllergyIntolerance", "alg"), content)

    def _create_document(self, patient: str) -> Change:
        content = {
            "status": "current",
            "docStatus": "preliminary",
            "type": _code("http://loinc.org", "11506-3", "Progress note"),
            "subject": {"reference": f"Patient/{patient}"},
            "date": self._date(self._rng.randrange(365), "%Y-%m-%dT%H:%M:00Z"),
            "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/doc-{patient}"}}],
        }
        return self._create("DocumentReference", self._new_id("DocumentReference", "doc"), content)

    # -- updates and deletes ---------------------------------------------------------------------

    def _update(self, resource_type: str, id_: str) -> Change:
        record = self._store.get(resource_type, id_)
        assert record is not None  # the bag only holds stored resources
        content = {k: v for k, v in record.resource.items() if k not in ("resourceType", "id", "meta")}
        rate = self._profile.minor_edit_rate
        if rate and self._rng.random() < rate:
            # Not clinically significant (Oracle): the narrative changes, ``_lastUpdated`` does not.
            content["text"] = {"status": "generated", "div": f"<div>note {self._rng.randrange(10**6)}</div>"}
            return self._store.put(resource_type, id_, content, significant=False)
        if resource_type == "Patient":
            content["telecom"] = [{"system": "phone", "value": self._phone(), "use": "home"}]
        elif resource_type == "Observation":
            code = content["code"]["coding"][0]["code"]
            content["status"] = "amended"
            vital = next((v for v in _VITALS if v[0] == code), None)
            if vital is not None:
                content["valueQuantity"] = self._quantity(vital)
            elif "valueQuantity" in content:
                quantity = dict(content["valueQuantity"])
                quantity["value"] = round(float(quantity["value"]) * self._rng.uniform(0.9, 1.1), 2)
                content["valueQuantity"] = quantity
        elif resource_type in _TOGGLES:
            key, values = _TOGGLES[resource_type]
            content[key] = values[1] if content.get(key) == values[0] else values[0]
        elif resource_type != "Condition":
            content["text"] = {
                "status": "generated",
                "div": f"<div>revision {self._rng.randrange(10**6)}</div>",
            }
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

    def _names(self, family: str, given: str) -> list[dict[str, Any]]:
        official: dict[str, Any] = {"use": "official", "family": family, "given": [given]}
        style = self._profile.name_style
        if style == "official-and-usual":  # Epic: the same content twice
            return [official, {**official, "use": "usual"}]
        if style == "usual-given":  # Oracle: a usual name with the given name only
            return [official, {"use": "usual", "given": [given]}]
        if style == "nickname" and given in _NICKNAMES:
            return [official, {"use": "nickname", "given": [_NICKNAMES[given]]}]
        return [official]

    def _phone(self) -> str:
        return f"555-{self._rng.randrange(10_000):04d}"

    def _date(self, days: int, fmt: str) -> str:
        return time.strftime(fmt, time.gmtime(_BASE_S + days * 86_400 + self._rng.randrange(86_400)))


_TOGGLES: dict[str, tuple[str, tuple[str, str]]] = {
    "Encounter": ("status", ("finished", "entered-in-error")),  # in-progress becomes finished
    "MedicationRequest": ("status", ("active", "completed")),
    "DocumentReference": ("docStatus", ("preliminary", "final")),
}


def mrn_system(profile: Profile, facility_id: str) -> str:
    """The system of the MRNs a facility of this profile issues (configure it as the facility's
    ``mrn_system`` where the MRN is not typed ``MR``: Epic)."""
    return profile.mrn_system.format(facility=facility_id)


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _mmhg(value: int) -> dict[str, Any]:
    return {"value": value, "unit": "mmHg", "system": _UCUM, "code": "mm[Hg]"}


def _clinical_status(code: str) -> dict[str, Any]:
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": code}]}

"""Per-type summaries: the flat, JSON-able fields the normalized SQL views read. The keys are the contract
documented in ``app.fhir.normalize``; every summary of a type has all of its type's keys (None when absent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.fhir.normalize import blood_pressure, identifiers, names
from app.fhir.normalize.elements import (
    ICD10,
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    absent_reason,
    choose,
    code_in,
    contained,
    first_code,
    first_present,
    number,
    obj,
    objs,
    reference,
    status,
    text,
    type_and_id,
)
from app.fhir.normalize.units import ucum_code

Summary = dict[str, Any]

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"


@dataclass(frozen=True)
class SummaryOptions:
    """Per-facility choices: the MRN identifier system (per-customer OIDs at Epic) and the extension URLs
    that mark a preferred name."""

    mrn_system: str | None = None
    preferred_name_extensions: tuple[str, ...] = (names.ISO21090_PREFERRED,)


def patient(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    base = names.official(names.current_names(resource, now)) or {}
    return {
        "mrn": identifiers.mrn(resource, options.mrn_system),
        "family": text(base.get("family")),
        "given": " ".join(names.givens(base)) or None,
        "preferred_name": names.preferred_name(resource, now, options.preferred_name_extensions),
        "official_name": names.render(base),
        "birth_date": text(resource.get("birthDate")),
        "gender": text(resource.get("gender")),
    }


_VALUE_TEXT_KEYS = ("valueString", "valueDateTime", "valueTime", "valuePeriod", "valueBoolean")


def _value_text(resource: dict[str, Any]) -> str | None:
    """A non-numeric value as text: a coded value's display or code, a string, a date, a boolean."""
    if "valueCodeableConcept" in resource:
        chosen = choose(resource["valueCodeableConcept"], (SNOMED, LOINC))
        return chosen.display or chosen.code
    for key in _VALUE_TEXT_KEYS:
        value = resource.get(key)
        if isinstance(value, bool):
            return "true" if value else "false"
        if (found := text(value)) is not None:
            return found
    return None


def _data_absent(resource: dict[str, Any]) -> str | None:
    """``dataAbsentReason``, else the data-absent-reason extension on the value (complex or primitive)."""
    if (code := status(resource.get("dataAbsentReason"))) is not None:
        return code
    for key, element in resource.items():
        if key.startswith(("value", "_value")) and (code := absent_reason(element)) is not None:
            return code
    return None


def observation(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    code = choose(resource.get("code"), (LOINC, SNOMED))
    quantity = obj(resource.get("valueQuantity"))
    role = blood_pressure.bp_role(resource)
    systolic = diastolic = None
    value = number(quantity.get("value")) if quantity else number(resource.get("valueInteger"))
    unit, ucum = text(quantity.get("unit")) or text(quantity.get("code")), ucum_code(quantity)
    if role == "panel":
        systolic, diastolic, panel_unit = blood_pressure.panel_values(resource)
        ucum = ucum or panel_unit
        unit = unit or panel_unit
    return {
        "subject": reference(resource.get("subject")),
        "encounter": reference(resource.get("encounter")),
        "effective": blood_pressure.effective(resource),
        "status": text(resource.get("status")),
        "code_system": code.system,
        "code": code.code,
        "display": code.display,
        "loinc": code_in(resource.get("code"), LOINC),
        "value": value,
        "value_comparator": text(quantity.get("comparator")),
        "value_text": _value_text(resource),
        "unit": unit,
        "ucum_code": ucum,
        "data_absent_reason": _data_absent(resource),
        "category": first_code(resource.get("category"), OBSERVATION_CATEGORY),
        "bp_role": role,
        "systolic": systolic,
        "diastolic": diastolic,
    }


def _onset(resource: dict[str, Any]) -> str | None:
    return first_present(resource, "onsetDateTime", "onsetString") or text(
        obj(resource.get("onsetPeriod")).get("start")
    )


def condition(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    code = choose(resource.get("code"), (SNOMED, ICD10CM, ICD10))
    return {
        "subject": reference(resource.get("subject")),
        "encounter": reference(resource.get("encounter")),
        "code": code.code,
        "code_system": code.system,
        "display": code.display,
        "category": first_code(resource.get("category"), CONDITION_CATEGORY),
        "clinical_status": status(resource.get("clinicalStatus")),
        "verification_status": status(resource.get("verificationStatus")),
        "onset": _onset(resource),
        "recorded_date": text(resource.get("recordedDate")),
    }


def medication_reference(resource: dict[str, Any]) -> tuple[str, str] | None:
    """The separate Medication a medication-bearing resource points at, if any (not a contained one)."""
    ref = obj(resource.get("medicationReference"))
    found = type_and_id(ref)
    return found if found is not None and found[0] == "Medication" else None


def _medication_of(resource: dict[str, Any]) -> dict[str, Any]:
    """``medication_code/system/display/ref`` whatever the shape: a CodeableConcept, a contained ``#id``
    Medication, or a reference to a separate Medication (code fields None, ``medication_ref`` set)."""
    concept: Any = resource.get("medicationCodeableConcept")
    med_ref: str | None = None
    display_fallback: str | None = None
    if concept is None and "medicationReference" in resource:
        ref = obj(resource["medicationReference"])
        display_fallback = text(ref.get("display"))
        target = reference(ref)
        if target is not None and target.startswith("#"):
            concept = obj(contained(resource, target)).get("code")
        elif (separate := medication_reference(resource)) is not None:
            med_ref = f"{separate[0]}/{separate[1]}"
    code = choose(concept, (RXNORM,))
    return {
        "medication_code": code.code,
        "medication_system": code.system,
        "medication_display": code.display or display_fallback,
        "medication_ref": med_ref,
    }


def medication_request(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    return {
        "subject": reference(resource.get("subject")),
        "encounter": reference(resource.get("encounter")),
        "status": text(resource.get("status")),
        "intent": text(resource.get("intent")),
        "authored_on": text(resource.get("authoredOn")),
        **_medication_of(resource),
    }


def medication(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    code = choose(resource.get("code"), (RXNORM,))
    return {"code": code.code, "system": code.system, "display": code.display}


def allergy_intolerance(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    code = choose(resource.get("code"), (RXNORM, SNOMED))
    return {
        "patient": reference(resource.get("patient")),
        "code": code.code,
        "code_system": code.system,
        "display": code.display,
        "clinical_status": status(resource.get("clinicalStatus")),
        "verification_status": status(resource.get("verificationStatus")),
        "criticality": text(resource.get("criticality")),
        "recorded_date": text(resource.get("recordedDate")),
    }


def _class_code(value: Any) -> str | None:
    # R4 `class` is a Coding; R5 (and some R4 servers ahead of it) send a list of CodeableConcepts.
    if isinstance(value, dict) and "coding" not in value:
        return text(value.get("code"))
    return first_code(value)


def encounter(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    period = obj(resource.get("period"))
    types = objs(resource.get("type"))
    return {
        "subject": reference(resource.get("subject")),
        "status": text(resource.get("status")),
        "class_code": _class_code(resource.get("class")),
        "period_start": text(period.get("start")),
        "period_end": text(period.get("end")),
        "type_display": choose(types[0]).display if types else None,
    }


_BY_TYPE: dict[str, Callable[[dict[str, Any], datetime, SummaryOptions], Summary]] = {
    "Patient": patient,
    "Observation": observation,
    "Condition": condition,
    "MedicationRequest": medication_request,
    "Medication": medication,
    "AllergyIntolerance": allergy_intolerance,
    "Encounter": encounter,
}

SUMMARIZED_TYPES: Sequence[str] = tuple(_BY_TYPE)


def summarize(resource: dict[str, Any], now: datetime, options: SummaryOptions) -> Summary:
    """The summary of ``resource`` for its type; ``{}`` for types without a view."""
    build = _BY_TYPE.get(str(resource.get("resourceType")))
    return build(resource, now, options) if build is not None else {}

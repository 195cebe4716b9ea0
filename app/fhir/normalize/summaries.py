"""Per-type summaries: the flat, JSON-able fields the normalized SQL views read. The keys are the contract
documented in ``app.fhir.normalize``; every summary of a type has all of its type's keys (None when absent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.fhir.normalize import blood_pressure, identifiers, medications, names
from app.fhir.normalize.elements import (
    ICD10,
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    absent_reason,
    choose,
    code_in,
    first_code,
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
        "effective_key": blood_pressure.instant_key(resource),
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


def _age(quantity: Any) -> tuple[Any, str | None, str | None]:
    """(value, unit code, text) of an Age: the value as sent, its UCUM code (else its unit), ``52 years``."""
    q = obj(quantity)
    value, unit = number(q.get("value")), ucum_code(q) or text(q.get("unit"))
    shown = text(q.get("unit")) or unit
    label = None if value is None else " ".join(p for p in (str(value), shown) if p)
    return value, unit, label


def _range_text(low: str | None, high: str | None) -> str | None:
    if low and high:
        return f"{low} to {high}"
    if low:
        return f">= {low}"
    return f"<= {high}" if high else None


def _onset(resource: dict[str, Any]) -> Summary:
    """``onset`` as text whatever its type, plus the typed fields the type has (ISO dates as sent, ages as
    numbers with their unit). ``onset`` keeps its earlier meaning for dateTime, Period (its start) and
    string."""
    fields: Summary = dict.fromkeys(
        (
            "onset",
            "onset_type",
            "onset_start",
            "onset_end",
            "onset_age_low",
            "onset_age_high",
            "onset_age_unit",
        )
    )
    if (when := text(resource.get("onsetDateTime"))) is not None:
        fields.update(onset=when, onset_type="dateTime", onset_start=when)
    elif "onsetPeriod" in resource:
        period = obj(resource["onsetPeriod"])
        start, end = text(period.get("start")), text(period.get("end"))
        fields.update(
            onset=start or _range_text(None, end), onset_type="Period", onset_start=start, onset_end=end
        )
    elif "onsetAge" in resource:
        value, unit, label = _age(resource["onsetAge"])
        fields.update(
            onset=label, onset_type="Age", onset_age_low=value, onset_age_high=value, onset_age_unit=unit
        )
    elif "onsetRange" in resource:
        onset_range = obj(resource["onsetRange"])
        low, low_unit, low_text = _age(onset_range.get("low"))
        high, high_unit, high_text = _age(onset_range.get("high"))
        fields.update(
            onset=_range_text(low_text, high_text),
            onset_type="Range",
            onset_age_low=low,
            onset_age_high=high,
            onset_age_unit=low_unit or high_unit,
        )
    elif (said := text(resource.get("onsetString"))) is not None:
        fields.update(onset=said, onset_type="string")
    return fields


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
        **_onset(resource),
        "recorded_date": text(resource.get("recordedDate")),
    }


def medication_reference(resource: dict[str, Any]) -> tuple[str, str] | None:
    """The separate Medication a medication-bearing resource points at, if any (not a contained one)."""
    ref = obj(resource.get("medicationReference"))
    found = type_and_id(ref)
    return found if found is not None and found[0] == "Medication" else None


def _medication_of(resource: dict[str, Any]) -> dict[str, Any]:
    """``medication_code/system/display/ref/unresolved/ingredients`` whatever the shape (``medications``)."""
    found, med_ref = medications.of_request(resource)
    return {
        "medication_code": found.code,
        "medication_system": found.system,
        "medication_display": found.display,
        "medication_ref": med_ref,
        "medication_unresolved": found.unresolved,
        "medication_ingredients": found.ingredients,
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
    found = medications.medication(resource)
    return {
        "code": found.code,
        "system": found.system,
        "display": found.display,
        "unresolved": found.unresolved,
        "ingredients": found.ingredients,
    }


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

"""What medication a MedicationRequest (or a Medication) means: a code and its system, or the reason there
is none (``UNRESOLVED``). The code, system and display always come from the same place: a display is never
borrowed from a reference when the code came from the Medication it points at.

Shapes seen in R4 payloads (EHR-FACTS §7): ``medicationCodeableConcept`` (Oracle: RxNorm beside a tenant
synonym); a contained ``#id`` Medication; a separate ``Medication/{id}`` (Epic; resolved by the
``medication_requests`` view from the stored Medication); a reference carrying only a ``display``; a
compounded or IV Medication with no code of its own, only ``ingredient[]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.fhir.normalize.elements import (
    RXNORM,
    choose,
    codings,
    contained,
    obj,
    objs,
    reference,
    text,
    type_and_id,
)

NO_MEDICATION = "no_medication"
NO_CODE = "no_code"
DISPLAY_ONLY = "display_only"
CODE_WITHOUT_SYSTEM = "code_without_system"
INGREDIENTS_ONLY = "ingredients_only"
CONTAINED_NOT_FOUND = "contained_not_found"
UNREADABLE_REFERENCE = "unreadable_reference"
MEDICATION_NOT_STORED = (
    "medication_not_stored"  # decided by the view: the Medication is not (or no longer) stored
)

#: Every ``medication_unresolved`` value, with what it means (README's "For consumers" lists them).
UNRESOLVED: dict[str, str] = {
    NO_MEDICATION: "the request names no medication (neither medicationCodeableConcept nor Reference)",
    NO_CODE: "the medication has neither a coding with a code nor a text",
    DISPLAY_ONLY: "only text: a CodeableConcept's text or a reference's display, no code",
    CODE_WITHOUT_SYSTEM: "a code without a system (kept in medication_code; its meaning is unknown)",
    INGREDIENTS_ONLY: "a compounded or IV Medication without a code of its own: see medication_ingredients",
    CONTAINED_NOT_FOUND: "a #id reference to a contained Medication that is not there",
    UNREADABLE_REFERENCE: "a reference that names no Medication we can read (urn:uuid, another type)",
    MEDICATION_NOT_STORED: "the referenced Medication is not stored (yet, or any more): see medication_ref",
}


@dataclass(frozen=True)
class Resolved:
    code: str | None
    system: str | None
    display: str | None
    unresolved: str | None
    ingredients: list[dict[str, Any]] | None = None


def concept(value: Any) -> Resolved:
    """A medication CodeableConcept: its RxNorm coding if any, else its first coding with a code."""
    chosen = choose(value, (RXNORM,))
    if chosen.code is not None:
        return Resolved(
            chosen.code, chosen.system, chosen.display, None if chosen.system else CODE_WITHOUT_SYSTEM
        )
    display = chosen.display or next((d for c in codings(value) if (d := text(c.get("display")))), None)
    return Resolved(None, None, display, DISPLAY_ONLY if display else NO_CODE)


def _ingredient(item: dict[str, Any]) -> dict[str, Any]:
    if "itemCodeableConcept" in item:
        found = choose(item["itemCodeableConcept"], (RXNORM,))
        code, system, display, ref = found.code, found.system, found.display, None
    else:
        ref_element = obj(item.get("itemReference"))
        code = system = None
        display, ref = text(ref_element.get("display")), reference(ref_element)
    return {
        "code": code,
        "system": system,
        "display": display,
        "reference": ref,
        "is_active": item.get("isActive") if isinstance(item.get("isActive"), bool) else None,
    }


def medication(resource: dict[str, Any]) -> Resolved:
    """A Medication (separate or contained): its own code, else its ingredients."""
    own = concept(resource.get("code"))
    ingredients = [_ingredient(i) for i in objs(resource.get("ingredient"))] or None
    if own.unresolved is None or own.code is not None or not ingredients:
        return Resolved(own.code, own.system, own.display, own.unresolved, ingredients)
    names = [i["display"] or i["code"] for i in ingredients if i["display"] or i["code"]]
    return Resolved(None, None, own.display or " + ".join(names) or None, INGREDIENTS_ONLY, ingredients)


def of_request(resource: dict[str, Any]) -> tuple[Resolved, str | None]:
    """The medication of a MedicationRequest and, when it is a separate Medication, ``Medication/{id}``
    (then code, system and reason are left to the view; display is the reference's, shown only while
    the Medication is not stored)."""
    if "medicationCodeableConcept" in resource:
        return concept(resource["medicationCodeableConcept"]), None
    if "medicationReference" not in resource:
        return Resolved(None, None, None, NO_MEDICATION), None
    return _referenced(resource, obj(resource["medicationReference"]))


def _referenced(resource: dict[str, Any], ref: dict[str, Any]) -> tuple[Resolved, str | None]:
    display, target = text(ref.get("display")), reference(ref)
    if target is None:
        return Resolved(None, None, display, DISPLAY_ONLY if display else NO_MEDICATION), None
    if target.startswith("#"):
        found = contained(resource, target)
        if found is None or found.get("resourceType") not in (None, "Medication"):
            return Resolved(None, None, display, CONTAINED_NOT_FOUND), None
        return medication(found), None
    separate = type_and_id(ref)
    if separate is not None and separate[0] == "Medication":
        return Resolved(None, None, display, None), f"Medication/{separate[1]}"
    return Resolved(None, None, display, UNREADABLE_REFERENCE), None

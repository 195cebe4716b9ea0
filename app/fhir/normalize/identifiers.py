"""Identifier clean-up and the patient's MRN (EHR-FACTS §7: Epic pads values with spaces; MRN systems
are per-customer OIDs, so the MRN system is configured per facility)."""

from __future__ import annotations

from typing import Any

from app.fhir.normalize.elements import codings, obj, objs, text

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# The DSTU2-era spelling of the same code system, still sent by some servers.
_V2_0203_OLD = "http://hl7.org/fhir/v2/0203"
_MRN_TYPE_TEXTS = {"mr", "mrn", "medical record number"}


def _trim_identifier(identifier: Any) -> Any:
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        return identifier
    return {**identifier, "value": identifier["value"].strip()}


def trim_identifiers(value: Any) -> Any:
    """A copy of ``value`` with every ``identifier`` value trimmed, at any depth (the resource's own, those
    of references and contained resources), everything else equal to the input. The input is never
    mutated."""
    if isinstance(value, list):
        return [trim_identifiers(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        cleaned = trim_identifiers(item)
        if key == "identifier":
            if isinstance(cleaned, list):
                cleaned = [_trim_identifier(i) for i in cleaned]
            else:
                cleaned = _trim_identifier(cleaned)
        out[key] = cleaned
    return out


def _typed_mr(identifier: dict[str, Any]) -> bool:
    type_ = obj(identifier.get("type"))
    for coding in codings(type_):
        if coding.get("system") in (V2_0203, _V2_0203_OLD) and coding.get("code") == "MR":
            return True
    type_text = text(type_.get("text"))
    return type_text is not None and type_text.casefold() in _MRN_TYPE_TEXTS


def _same_system(system: Any, configured: str) -> bool:
    got = text(system)
    if got is None:
        return False
    # A facility may configure "1.2.840..." for a system the EHR spells "urn:oid:1.2.840..." (or back).
    return got.removeprefix("urn:oid:") == configured.strip().removeprefix("urn:oid:")


def mrn(patient: dict[str, Any], mrn_system: str | None) -> str | None:
    """The medical record number, trimmed. With ``mrn_system`` configured, only an identifier in that
    system counts: another MR-typed identifier may belong to a different organisation, and a missing MRN
    is safer than a wrong one. Without it, the first identifier typed ``MR`` (v2-0203). ``use=old``
    identifiers are skipped."""
    for identifier in objs(patient.get("identifier")):
        if identifier.get("use") == "old":
            continue
        value = text(identifier.get("value"))
        if value is None:
            continue
        if mrn_system is not None:
            if _same_system(identifier.get("system"), mrn_system):
                return value
        elif _typed_mr(identifier):
            return value
    return None

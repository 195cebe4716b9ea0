"""Tolerant readers for FHIR datatypes (CodeableConcept, Coding, Reference, dateTime) in raw JSON.

Every reader accepts whatever a vendor sent, including the wrong shape, and answers ``None`` or an empty
list rather than raising: normalization must never be the reason a resource is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

# Some payloads name a code system by its HL7 OID instead of its canonical URL; both mean the same system.
_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.3": ICD10,
    "urn:oid:2.16.840.1.113883.6.8": UCUM,
}

_TYPE_ID_TAIL = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def objs(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a repeating element; a lone object counts as a list of one."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def text(value: Any) -> str | None:
    """A non-blank string, stripped; anything else is None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


#: A JSON number as ``app.fhir.jsonwire`` decodes it: ``Decimal`` keeps the sender's digits.
Number = int | float | Decimal


def number(value: Any) -> Number | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return value


def canonical_system(system: Any) -> str | None:
    """The code system URL, with the well-known OID spellings folded onto their canonical URL."""
    raw = text(system)
    return _ALIASES.get(raw, raw) if raw is not None else None


@dataclass(frozen=True)
class Code:
    """One coding chosen from a CodeableConcept. ``system`` is reported as the sender spelled it."""

    system: str | None
    code: str | None
    display: str | None


def codings(concept: Any) -> list[dict[str, Any]]:
    return objs(obj(concept).get("coding"))


def choose(concept: Any, prefer: Sequence[str] = ()) -> Code:
    """The coding of ``prefer``'s first system present (vendors put proprietary systems first), else the
    first coding with a code. ``display`` is that coding's display, else the concept's ``text``."""
    cc = obj(concept)
    found = [c for c in codings(cc) if text(c.get("code")) is not None]
    chosen: dict[str, Any] | None = None
    for system in prefer:
        chosen = next((c for c in found if canonical_system(c.get("system")) == system), None)
        if chosen is not None:
            break
    if chosen is None and found:
        chosen = found[0]
    if chosen is None:
        return Code(None, None, text(cc.get("text")))
    return Code(
        text(chosen.get("system")),
        text(chosen.get("code")),
        text(chosen.get("display")) or text(cc.get("text")),
    )


def code_in(concept: Any, system: str) -> str | None:
    """The code of the first coding in ``system`` (OID spellings included)."""
    for coding in codings(concept):
        if canonical_system(coding.get("system")) == system and text(coding.get("code")) is not None:
            return text(coding.get("code"))
    return None


def codes_in(concept: Any, system: str) -> set[str]:
    return {
        code
        for coding in codings(concept)
        if canonical_system(coding.get("system")) == system and (code := text(coding.get("code")))
    }


def status(concept: Any) -> str | None:
    """A status-like CodeableConcept (clinicalStatus, verificationStatus...) as its code, else its text."""
    chosen = choose(concept)
    return chosen.code or chosen.display


def first_code(concepts: Any, system: str | None = None) -> str | None:
    """A repeating CodeableConcept (``category``) as one code: the first in ``system``, else the first."""
    items = objs(concepts)
    if system is not None:
        for cc in items:
            if (code := code_in(cc, system)) is not None:
                return code
    for cc in items:
        chosen = choose(cc)
        if chosen.code or chosen.display:
            return chosen.code or chosen.display
    return None


def reference(value: Any) -> str | None:
    """A Reference as ``Type/id`` when it names one (absolute URLs and ``/_history`` dropped, so that it
    joins on our key), else the reference string as sent (``#contained``, ``urn:uuid:``), else None."""
    ref = text(obj(value).get("reference"))
    if ref is None or ref.startswith("#"):
        return ref
    match = _TYPE_ID_TAIL.search(ref.split("?", 1)[0])
    return f"{match['type']}/{match['id']}" if match else ref


def type_and_id(value: Any) -> tuple[str, str] | None:
    """A Reference's (type, id) when it names a resource outside this one."""
    ref = reference(value)
    if ref is None or ref.startswith("#") or "/" not in ref:
        return None
    match = _TYPE_ID_TAIL.search(ref)
    return (match["type"], match["id"]) if match else None


def contained(resource: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """The contained resource a ``#id`` reference points at."""
    wanted = ref.removeprefix("#")
    return next((r for r in objs(resource.get("contained")) if r.get("id") == wanted), None)


def absent_reason(element: Any) -> str | None:
    """The code of a ``data-absent-reason`` extension on a complex element."""
    for ext in objs(obj(element).get("extension")):
        if ext.get("url") == DATA_ABSENT_REASON:
            return text(ext.get("valueCode")) or "unknown"
    return None


def first_present(resource: dict[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` holding a string, verbatim (date precision kept)."""
    for key in keys:
        if (value := text(resource.get(key))) is not None:
            return value
    return None


def earliest_instant(value: str) -> datetime | None:
    """The earliest instant a FHIR date/dateTime/instant can mean (``2019`` → 2019-01-01T00:00Z), or None
    when it cannot be read. Used only for comparisons; stored values keep their original precision."""
    raw = value.strip()
    try:
        if len(raw) == 4:
            return datetime(int(raw), 1, 1, tzinfo=UTC)
        if len(raw) == 7:
            return datetime(int(raw[:4]), int(raw[5:7]), 1, tzinfo=UTC)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)

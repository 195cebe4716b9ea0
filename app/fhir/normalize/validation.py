"""Lenient validation against the fhir.resources R4B models (EHR-FACTS §7: strict validation fails on
real payloads). Validation only reports: the raw resource is stored whatever it says.

An issue is ``"<field path>: <error type>"``, e.g. ``"name.0.given: list_type"``. Issues never carry
values (they end up in the database and in logs, which hold no patient data), and path segments that do
not look like FHIR element names are masked, since an unknown key is the one place a payload could put
text into a path.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from app.fhir.normalize.elements import earliest_instant, obj, text

MAX_ISSUES = 50
_ELEMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")

# Dates that describe the past: one later than `now` is a data-quality issue worth recording. A day of
# slack because a date-only value is in the patient's local time zone.
_PAST_DATES: dict[str, tuple[str, ...]] = {
    "Patient": ("birthDate",),
    "Observation": ("effectiveDateTime", "effectiveInstant", "issued"),
    "Condition": ("recordedDate", "onsetDateTime"),
    "MedicationRequest": ("authoredOn",),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
}
_FUTURE_SLACK = timedelta(days=1)


@cache
def _model(resource_type: str) -> Any:
    """The R4B model class, or None for a type R4B does not know."""
    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None


def _segment(part: Any) -> str:
    if isinstance(part, int):
        return str(part)
    if isinstance(part, str) and _ELEMENT_NAME.match(part):
        return part
    return "?"


def _model_issues(resource: dict[str, Any]) -> list[str]:
    resource_type = text(resource.get("resourceType"))
    if resource_type is None:
        return ["resourceType: missing"]
    model = _model(resource_type)
    if model is None:
        return ["resourceType: unknown_resource_type"]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [
            f"{'.'.join(_segment(p) for p in err['loc']) or '<root>'}: {err['type']}"
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
    except (ValueError, TypeError) as exc:
        # fhir.resources raises plain errors from a few root validators; their messages may quote values.
        return [f"<root>: {type(exc).__name__}"]
    return []


def _future_dates(resource: dict[str, Any], now: datetime) -> list[str]:
    issues = []
    for field in _PAST_DATES.get(str(resource.get("resourceType")), ()):
        value = text(resource.get(field))
        when = earliest_instant(value) if value is not None else None
        if when is not None and when > now + _FUTURE_SLACK:
            issues.append(f"{field}: future_date")
    return issues


def validation_issues(resource: dict[str, Any], now: datetime) -> list[str]:
    """Issues of ``resource``: model validation errors, then past-describing dates later than ``now``.
    Deduplicated, at most MAX_ISSUES (the last one then says how many were left out)."""
    found = list(dict.fromkeys([*_model_issues(obj(resource)), *_future_dates(obj(resource), now)]))
    if len(found) > MAX_ISSUES:
        left_out = len(found) - (MAX_ISSUES - 1)
        found = [*found[: MAX_ISSUES - 1], f"<issues>: {left_out}_more"]
    return found

"""Blood pressure as one reading (EHR-FACTS §7).

US Core sends a panel (LOINC 85354-9) whose components are systolic (8480-6) and diastolic (8462-4).
Oracle sends the panel only when Millennium paired the readings (the panel id is synthesized from the
children's); unpaired readings arrive as separate systolic and diastolic Observations, which are paired
here when subject, effective time and encounter are the same.

A reading is a JSON-able dict::

    {"subject": "Patient/x", "effective": "2024-05-01T10:00:00Z", "encounter": "Encounter/e" | None,
     "systolic": 120, "diastolic": 80, "unit": "mm[Hg]", "source_ids": ["o-sys", "o-dia"]}

``systolic`` or ``diastolic`` is None when its half is missing: a lone half is still a reading, never
dropped. ``unit`` is the UCUM code when derivable, else the unit as sent.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any, Literal

from app.fhir.normalize.elements import (
    LOINC,
    Number,
    codes_in,
    earliest_instant,
    number,
    obj,
    objs,
    reference,
    text,
)
from app.fhir.normalize.units import ucum_code

PANEL_CODES = frozenset({"85354-9", "55284-4"})  # US Core panel; the older "systolic and diastolic" panel
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"

BpRole = Literal["panel", "systolic", "diastolic"]

#: Statuses that mean no measurement stands: recorded in error, or never made.
NOT_A_READING = frozenset({"entered-in-error", "cancelled"})


def bp_role(observation: dict[str, Any]) -> BpRole | None:
    """Whether the Observation is a blood pressure panel, a lone systolic or diastolic reading, or neither."""
    loinc = codes_in(observation.get("code"), LOINC)
    if loinc & PANEL_CODES:
        return "panel"
    if SYSTOLIC in loinc:
        return "systolic"
    if DIASTOLIC in loinc:
        return "diastolic"
    return None


def effective(observation: dict[str, Any]) -> str | None:
    """The clinically relevant time as sent (original precision): dateTime, instant or period start."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        if (value := text(observation.get(key))) is not None:
            return value
    return text(obj(observation.get("effectivePeriod")).get("start"))


def _component(observation: dict[str, Any], loinc: str) -> dict[str, Any] | None:
    return next(
        (c for c in objs(observation.get("component")) if loinc in codes_in(c.get("code"), LOINC)),
        None,
    )


def _quantity_of(element: dict[str, Any] | None) -> tuple[Number | None, str | None]:
    quantity = obj(obj(element).get("valueQuantity"))
    return number(quantity.get("value")), ucum_code(quantity) or text(quantity.get("unit"))


def panel_values(observation: dict[str, Any]) -> tuple[Number | None, Number | None, str | None]:
    """(systolic, diastolic, unit) of a panel's components."""
    systolic, sys_unit = _quantity_of(_component(observation, SYSTOLIC))
    diastolic, dia_unit = _quantity_of(_component(observation, DIASTOLIC))
    return systolic, diastolic, sys_unit or dia_unit


def instant_key(observation: dict[str, Any]) -> str | None:
    """The effective time as a pairing key: "10:00:00Z", "10:00:00.000+00:00" and "05:00:00-05:00" are the
    same moment (one UTC ISO string); date-only or unreadable values compare as sent. Stored in the
    Observation summary (``effective_key``) so that the store groups candidates by the same rule."""
    value = effective(observation)
    if value is None or len(value) <= 10:
        return value
    instant = earliest_instant(value)
    return instant.astimezone(UTC).isoformat() if instant is not None else value


def _key(observation: dict[str, Any]) -> tuple[Any, ...]:
    return (
        reference(observation.get("subject")),
        instant_key(observation),
        reference(observation.get("encounter")),
    )


def _reading(
    first: dict[str, Any],
    systolic: Number | None,
    diastolic: Number | None,
    unit: str | None,
    source_ids: list[str],
) -> dict[str, Any]:
    return {
        "subject": reference(first.get("subject")),
        "effective": effective(first),
        "encounter": reference(first.get("encounter")),
        "systolic": systolic,
        "diastolic": diastolic,
        "unit": unit,
        "source_ids": source_ids,
    }


def _id(observation: dict[str, Any]) -> str:
    return str(observation.get("id", ""))


def pair_blood_pressure(observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Blood pressure readings from any mix of Observations; others, and those whose status is in
    ``NOT_A_READING`` (``entered-in-error``, ``cancelled``), are ignored. A panel gives one reading. Split
    halves with the same key pair up (in id order when a key has several: two systolic and two diastolic
    halves are two readings, never four); a half whose key and value match a panel's is the same
    measurement and only adds its id to the panel's ``source_ids``. Panels come first, in input order,
    then paired halves in the order their key first appeared."""
    readings: list[dict[str, Any]] = []
    panels: dict[tuple[Any, ...], dict[str, Any]] = {}
    halves: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    order: list[tuple[Any, ...]] = []
    for obs in observations:
        role = bp_role(obs)
        if role is None or obs.get("status") in NOT_A_READING:
            continue
        key = _key(obs)
        if role == "panel":
            systolic, diastolic, unit = panel_values(obs)
            reading = _reading(obs, systolic, diastolic, unit, [_id(obs)])
            readings.append(reading)
            panels.setdefault(key, reading)
            continue
        if key not in halves:
            halves[key] = {"systolic": [], "diastolic": []}
            order.append(key)
        halves[key][role].append(obs)

    for key in order:
        sides = halves[key]
        panel = panels.get(key)
        if panel is not None:
            for side in ("systolic", "diastolic"):
                for obs in list(sides[side]):
                    if _quantity_of(obs)[0] == panel[side]:
                        panel["source_ids"].append(_id(obs))
                        sides[side].remove(obs)
        systolics = sorted(sides["systolic"], key=_id)
        diastolics = sorted(sides["diastolic"], key=_id)
        for i in range(max(len(systolics), len(diastolics))):
            sys_obs = systolics[i] if i < len(systolics) else None
            dia_obs = diastolics[i] if i < len(diastolics) else None
            sys_value, sys_unit = _quantity_of(sys_obs)
            dia_value, dia_unit = _quantity_of(dia_obs)
            first = sys_obs if sys_obs is not None else dia_obs
            if first is None:  # unreachable: the loop bound guarantees one half
                continue
            ids = [_id(o) for o in (sys_obs, dia_obs) if o is not None]
            readings.append(_reading(first, sys_value, dia_value, sys_unit or dia_unit, ids))
    return readings

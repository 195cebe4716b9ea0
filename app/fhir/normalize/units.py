"""UCUM codes for quantities that carry only a human unit string (EHR-FACTS §7: "quantities with a unit
but no UCUM code").

Only unambiguous spellings are mapped. The lookup ignores case and spacing, so a spelling whose meaning
depends on case (``m`` metre vs ``M`` molar) is deliberately absent: no code beats a wrong code.
"""

from __future__ import annotations

from typing import Any

from app.fhir.normalize.elements import UCUM, canonical_system, obj, text

_SPELLINGS: dict[str, str] = {
    # pressure
    "mmhg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "mm hg": "mm[Hg]",
    "millimeter of mercury": "mm[Hg]",
    # rates
    "/min": "/min",
    "bpm": "/min",
    "beats/min": "/min",
    "beats/minute": "/min",
    "beats per minute": "/min",
    "breaths/min": "/min",
    "breaths/minute": "/min",
    "breaths per minute": "/min",
    "per minute": "/min",
    "{beats}/min": "{beats}/min",
    "{breaths}/min": "{breaths}/min",
    # mass, length, body measures
    "kg": "kg",
    "kilogram": "kg",
    "kilograms": "kg",
    "g": "g",
    "gram": "g",
    "grams": "g",
    "mg": "mg",
    "mcg": "ug",
    "ug": "ug",
    "µg": "ug",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "oz": "[oz_av]",
    "[oz_av]": "[oz_av]",
    "cm": "cm",
    "centimeter": "cm",
    "centimeters": "cm",
    "mm": "mm",
    "in": "[in_i]",
    "inch": "[in_i]",
    "inches": "[in_i]",
    "[in_i]": "[in_i]",
    "kg/m2": "kg/m2",
    "kg/m^2": "kg/m2",
    "kg/m²": "kg/m2",
    # temperature
    "cel": "Cel",
    "°c": "Cel",
    "degc": "Cel",
    "deg c": "Cel",
    "celsius": "Cel",
    "[degf]": "[degF]",
    "°f": "[degF]",
    "degf": "[degF]",
    "deg f": "[degF]",
    "fahrenheit": "[degF]",
    # fractions and lab concentrations
    "%": "%",
    "percent": "%",
    "mg/dl": "mg/dL",
    "g/dl": "g/dL",
    "g/l": "g/L",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "meq/l": "meq/L",
    "ng/ml": "ng/mL",
    "pg/ml": "pg/mL",
    "u/l": "U/L",
    "iu/l": "[IU]/L",
    "[iu]/l": "[IU]/L",
    "ml": "mL",
    "l": "L",
    "l/min": "L/min",
    "ml/min": "mL/min",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "10*3/ul": "10*3/uL",
    "10^3/ul": "10*3/uL",
    "k/ul": "10*3/uL",
    "10*6/ul": "10*6/uL",
    "10^6/ul": "10*6/uL",
    "m/ul": "10*6/uL",
    "fl": "fL",
    "pg": "pg",
    "s": "s",
    "sec": "s",
    "min": "min",
    "h": "h",
    "hr": "h",
}


def _spelling(unit: str) -> str:
    # casefold also folds the micro sign (U+00B5) onto the Greek mu, so both spellings of "µg" match.
    return " ".join(unit.split()).casefold()


_UCUM_BY_SPELLING = {_spelling(spelling): code for spelling, code in _SPELLINGS.items()}


def ucum_for_unit(unit: str | None) -> str | None:
    """The UCUM code for a free-text unit, or None when the spelling is not known to be unambiguous."""
    if unit is None:
        return None
    return _UCUM_BY_SPELLING.get(_spelling(unit))


def ucum_code(quantity: Any) -> str | None:
    """The UCUM code of a Quantity: its ``code`` when ``system`` is UCUM, else derived from ``unit`` (or from
    a system-less ``code``); a code from another unit system is never taken for UCUM."""
    q = obj(quantity)
    code, unit = text(q.get("code")), text(q.get("unit"))
    system = canonical_system(q.get("system"))
    if system == UCUM and code is not None:
        return code
    derived = ucum_for_unit(unit)
    if derived is None and system is None:
        derived = ucum_for_unit(code)
    return derived

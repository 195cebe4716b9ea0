"""Which of a patient's names is official and which one the patient prefers to be called (EHR-FACTS §7).

Vendors disagree on how to say "preferred": Oracle adds ``use=usual`` with a given name only beside the
``official`` name, Epic sends ``official`` and ``usual`` with identical content, others use ``nickname``,
some an extension. So names are compared by value: a candidate that adds nothing to the official name
(every part it has equals the official one) does not change the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.fhir.normalize.elements import earliest_instant, obj, objs, text

ISO21090_PREFERRED = "http://hl7.org/fhir/StructureDefinition/iso21090-preferred"
"""Core extension (any datatype, boolean) flagging the preferred item of a list; seen on HumanName."""

# Names that never answer "what is this patient called now".
_NOT_CURRENT_USES = {"old", "maiden", "anonymous"}


def givens(name: dict[str, Any]) -> list[str]:
    raw = name.get("given")
    # A lone string where the spec says list is common enough; iterating it would spell out letters.
    values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return [g for g in (text(v) for v in values) if g is not None]


def render(name: dict[str, Any]) -> str | None:
    """A HumanName as text: its ``text`` when given, else given names then family."""
    if (explicit := text(name.get("text"))) is not None:
        return " ".join(explicit.split())
    parts = [*givens(name), text(name.get("family"))]
    joined = " ".join(p for p in parts if p)
    return joined or None


def _current(name: dict[str, Any], now: datetime) -> bool:
    if name.get("use") in _NOT_CURRENT_USES:
        return False
    end = text(obj(name.get("period")).get("end"))
    if end is None:
        return True
    ended = earliest_instant(end)
    return ended is None or ended > now


def current_names(patient: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    return [n for n in objs(patient.get("name")) if _current(n, now)]


def official(names: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``use=official``, else ``usual``, else a name without ``use``, else the first."""
    for use in ("official", "usual", None):
        found = next((n for n in names if n.get("use") == use), None)
        if found is not None:
            return found
    return names[0] if names else None


def _fold(value: str | None) -> str | None:
    return " ".join(value.split()).casefold() if value is not None else None


def _adds_nothing(candidate: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when every part ``candidate`` has equals the same part of ``base``, compared by value."""
    if _fold(render(candidate)) == _fold(render(base)):
        return True
    if text(candidate.get("text")) is not None:
        return False
    family = _fold(text(candidate.get("family")))
    if family is not None and family != _fold(text(base.get("family"))):
        return False
    cand_givens = [_fold(g) for g in givens(candidate)]
    base_givens = [_fold(g) for g in givens(base)]
    return cand_givens == base_givens[: len(cand_givens)]


def _flagged(name: dict[str, Any], extension_urls: Sequence[str]) -> bool:
    return any(
        ext.get("url") in extension_urls and ext.get("valueBoolean") is True
        for ext in objs(name.get("extension"))
    )


def _from_patient_extension(patient: dict[str, Any], extension_urls: Sequence[str]) -> str | None:
    for ext in objs(patient.get("extension")):
        if ext.get("url") not in extension_urls:
            continue
        if (value := text(ext.get("valueString"))) is not None:
            return value
        if isinstance(ext.get("valueHumanName"), dict) and (rendered := render(ext["valueHumanName"])):
            return rendered
    return None


def preferred_name(patient: dict[str, Any], now: datetime, extension_urls: Sequence[str]) -> str | None:
    """The name the patient prefers to be called, as text. In order: a name flagged by one of
    ``extension_urls`` (boolean on a HumanName) or a Patient extension in ``extension_urls`` holding a
    string or HumanName; a ``nickname``; a ``usual`` name that differs in value from the official one;
    otherwise the official name. Names that ended before ``now`` or are ``old``/``maiden`` are ignored."""
    names = current_names(patient, now)
    base = official(names)
    flagged = next((n for n in names if _flagged(n, extension_urls)), None)
    if flagged is not None and (rendered := render(flagged)):
        return rendered
    if (from_extension := _from_patient_extension(patient, extension_urls)) is not None:
        return from_extension
    for use in ("nickname", "usual"):
        for candidate in (n for n in names if n.get("use") == use and n is not base):
            rendered = render(candidate)
            if rendered is not None and (base is None or not _adds_nothing(candidate, base)):
                return rendered
    return render(base) if base is not None else None

"""HL7 v2 ADT messages for ehrsim's Patient and Encounter changes (pure: no I/O, no clock).

One change becomes one message (MSH, EVN, PID, PV1), rendered from the FHIR content the change produced,
so the feed and the FHIR API tell the same story:

| change | event |
|---|---|
| Patient create / update | A04 register / A08 update |
| Encounter create | A01 admit (PV1-44 = ``period.start``) |
| Encounter update that makes it ``finished`` | A03 discharge (PV1-45 = ``period.end``) |
| Encounter update that makes it ``entered-in-error``, Encounter delete | A11 cancel admit |
| any other Encounter update (Oracle's narrative-only edits) | A08 update |

ehrsim has no merges (no A40) and its encounters carry no location (no A02 transfer). PID-3 repeats the
patient's identifiers: its FHIR id typed ``PI``, then the MRN (trimmed) typed ``MR`` with the facility's
assigning authority; PV1-19 is the Encounter's id. Segments end with ``\\r``; values are escaped
(``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ehrsim.store import Change

#: HL7 v2 version per profile (ehrsim/README.md says why); ``mllp.version`` in the config overrides it.
PROFILE_VERSIONS = {"epic": "2.5.1", "oracle": "2.3", "meditech": "2.4"}
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
ADT_TYPES = ("Patient", "Encounter")

_STRUCTURES = {"A01": "ADT_A01", "A03": "ADT_A03", "A04": "ADT_A01", "A08": "ADT_A01", "A11": "ADT_A09"}
_SEX = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
_CLASS = {"IMP": "I", "AMB": "O", "EMER": "E", "OBSENC": "O", "PRENC": "P"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


@dataclass(frozen=True, slots=True)
class Wire:
    """Who the facility is on the wire: MSH-3..6, MSH-11/12, and PID-3's MRN assigning authority (an HD,
    subcomponents already joined with ``&``)."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    version: str
    mrn_authority: str
    processing_id: str = "P"


def assigning_authority(namespace: str, mrn_system: str) -> str:
    """The HD naming the facility's MRN system: ``namespace&oid&ISO`` for a ``urn:oid:`` system,
    ``namespace&uri&URI`` otherwise (the v2-to-FHIR mapping of HD to ``Identifier.system``)."""
    if mrn_system.startswith("urn:oid:"):
        return f"{_escape(namespace)}&{mrn_system.removeprefix('urn:oid:')}&ISO"
    return f"{_escape(namespace)}&{_escape(mrn_system)}&URI"


def adt_event(
    change: Change, resource: dict[str, Any] | None, previous_status: str | None = None
) -> str | None:
    """The ADT trigger event of a change (the table above); ``None`` when it announces nothing.
    ``previous_status``: the Encounter's status before an update, when known."""
    if change.resource_type == "Patient":
        # ehrsim never deletes patients (a merge would be A40).
        return None if change.kind == "delete" else ("A04" if change.kind == "create" else "A08")
    if change.resource_type == "Encounter":
        return _encounter_event(change, resource, previous_status)
    return None


def _encounter_event(change: Change, resource: dict[str, Any] | None, previous_status: str | None) -> str:
    if change.kind == "create":
        return "A01"
    if change.kind == "delete":
        return "A11"
    status = str((resource or {}).get("status"))
    if status == previous_status:
        return "A08"
    return {"finished": "A03", "entered-in-error": "A11"}.get(status, "A08")


def render_adt(
    wire: Wire,
    event: str,
    *,
    control_id: str,
    at_ms: int,
    patient: dict[str, Any],
    encounter: dict[str, Any] | None = None,
) -> bytes:
    """One ADT message, segments joined by ``\\r`` (no MLLP framing)."""
    stamp = _ts(at_ms)
    message_type = f"ADT^{event}" if wire.version == "2.3" else f"ADT^{event}^{_STRUCTURES[event]}"
    msh = [  # MSH-3 onwards; MSH-1 is the "|" that joins them, MSH-2 the encoding characters
        _escape(wire.sending_application),
        _escape(wire.sending_facility),
        _escape(wire.receiving_application),
        _escape(wire.receiving_facility),
        stamp,
        "",
        message_type,
        _escape(control_id),
        wire.processing_id,
        wire.version,
    ]
    segments = [
        "MSH|^~\\&|" + "|".join(msh),
        f"EVN|{event}|{stamp}",
        _pid(wire, patient),
        _pv1(wire, event, encounter),
    ]
    return ("\r".join(segments) + "\r").encode()


def mrn_of(patient: dict[str, Any], mrn_system: str) -> str | None:
    """The patient's MRN in ``mrn_system``, trimmed (Epic pads identifier values)."""
    for identifier in patient.get("identifier") or []:
        if identifier.get("system") == mrn_system and identifier.get("value"):
            return str(identifier["value"]).strip()
    return None


def _pid(wire: Wire, patient: dict[str, Any]) -> str:
    identifiers = [f"{_escape(patient['id'])}^^^{_escape(wire.sending_application)}^PI"]
    for identifier in patient.get("identifier") or []:
        value = str(identifier.get("value") or "").strip()
        if value:
            identifiers.append(f"{_escape(value)}^^^{wire.mrn_authority}^MR")
    names = patient.get("name") or [{}]
    name = next((n for n in names if n.get("use") == "official"), names[0])
    given = name.get("given") or []
    phones = [t for t in patient.get("telecom") or [] if t.get("system") == "phone"]
    fields = [""] * 14
    fields[1] = "1"
    fields[3] = "~".join(identifiers)
    fields[5] = f"{_escape(name.get('family', ''))}^{_escape(given[0] if given else '')}"
    fields[7] = _ts_from_fhir(patient.get("birthDate"))
    fields[8] = _SEX.get(str(patient.get("gender")), "U")
    fields[13] = f"{_escape(phones[0]['value'])}^PRN^PH" if phones else ""
    return "PID|" + "|".join(fields[1:])


def _pv1(wire: Wire, event: str, encounter: dict[str, Any] | None) -> str:
    if encounter is None:
        return "PV1|1|N"  # a person-level event: no visit ("not applicable")
    fields = [""] * 46
    fields[1] = "1"
    code = ((encounter.get("class") or {}).get("code")) or ""
    fields[2] = _CLASS.get(code, "U")
    fields[19] = f"{_escape(encounter['id'])}^^^{_escape(wire.sending_application)}^VN"
    period = encounter.get("period") or {}
    fields[44] = _ts_from_fhir(period.get("start"))
    if event == "A03":
        fields[45] = _ts_from_fhir(period.get("end"))
    return "PV1|" + "|".join(fields[1:]).rstrip("|")


def _escape(value: str) -> str:
    for raw, escaped in _ESCAPES:
        value = value.replace(raw, escaped)
    return value.replace("\r", "\\X0D\\").replace("\n", "\\X0A\\")


def _ts(ms: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(ms // 1000)) + "+0000"


def _ts_from_fhir(value: Any) -> str:
    """A FHIR date or UTC dateTime (``Z``) as an HL7 TS: ``YYYYMMDD`` or ``YYYYMMDDHHMMSS+0000``."""
    if not isinstance(value, str) or not value:
        return ""
    digits = value[:19].replace("-", "").replace("T", "").replace(":", "")
    return digits if len(value) <= 10 else f"{digits}+0000"

"""An HL7 v2 message parsed into what we keep (python-hl7 does the parsing): pure, no I/O.

Tolerant the way senders need it to be: versions 2.3 to 2.8; the delimiters the message declares in
MSH-1/MSH-2 (custom ones included); segments ended by ``\\r``, ``\\n`` or ``\\r\\n``; escape sequences
(``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``, hex) unescaped; unknown and Z-segments ignored (they
stay in the raw message, which is kept as received). Only an MSH we cannot read is an error
(``MessageRejected`` with reason ``unparseable_msh``); a missing PID or PV1 leaves their fields empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hl7
from hl7.exceptions import HL7Exception

from app.errors import MessageRejected

_ENCODINGS = ("utf-8", "cp1252")


@dataclass(frozen=True)
class Header:
    """MSH, as routing and acknowledging need it."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_time: datetime | None
    message_type: str  # MSH-9.1 (ADT)
    event_type: str  # MSH-9.2 (A08), or EVN-1 when MSH-9.2 is empty (v2.3 senders)
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version: str  # MSH-12


@dataclass(frozen=True)
class Identifier:
    value: str
    authority: str  # CX-4 namespace id
    type_code: str  # CX-5 (MR)


@dataclass(frozen=True)
class AdtFields:
    """The patient and visit fields of an ADT message (PID, PV1, MRG). Never logged."""

    identifiers: tuple[Identifier, ...]
    prior_identifiers: tuple[Identifier, ...]  # MRG-1 (A40)
    visit_number: str | None
    patient_class: str | None
    location: str | None
    admit_time: datetime | None
    discharge_time: datetime | None

    def mrn(self, authority: str) -> str | None:
        return _pick(self.identifiers, authority)

    def prior_mrn(self, authority: str) -> str | None:
        return _pick(self.prior_identifiers, authority)


@dataclass(frozen=True)
class Parsed:
    header: Header
    adt: AdtFields
    text: str  # the message decoded, segments ended by \r


def _pick(identifiers: tuple[Identifier, ...], authority: str) -> str | None:
    for ident in identifiers:
        if ident.authority.strip() == authority and ident.value.strip():
            return ident.value.strip()
    return None


def normalize_terminators(raw: bytes) -> bytes:
    """Segments ended by ``\\r\\n`` or ``\\n`` (files, some engines) become ``\\r``; trailing ends dropped."""
    return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r \t")


def decode(raw: bytes) -> str:
    for encoding in _ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")  # every byte decodes: a message is never refused for its charset


def parse(raw: bytes) -> Parsed:
    """Parse one message (the bytes of an MLLP frame). Raises ``MessageRejected`` when MSH is unusable."""
    text = decode(normalize_terminators(raw))
    if not text.startswith("MSH") or len(text) < 8:
        raise MessageRejected("unparseable_msh", "the message does not start with an MSH segment")
    field_sep = text[3]
    if field_sep.isalnum() or field_sep in "\r ":
        raise MessageRejected("unparseable_msh", "MSH-1 is no field separator")
    encoding = text[4 : text.find(field_sep, 4)] if text.find(field_sep, 4) > 0 else ""
    if len(encoding) < 4 or len(set(encoding + field_sep)) != len(encoding) + 1:
        raise MessageRejected("unparseable_msh", "MSH-2 does not declare four distinct delimiters")
    try:
        message = hl7.parse(_segments_we_read(text))
        header = _header(message, field_sep, encoding)
    except (HL7Exception, IndexError, KeyError, ValueError) as exc:
        raise MessageRejected("unparseable_msh", f"MSH unreadable ({type(exc).__name__})") from exc
    if not header.control_id:
        raise MessageRejected("unparseable_msh", "MSH-10 (message control id) is empty")
    if not header.sending_application:
        raise MessageRejected("unparseable_msh", "MSH-3 (sending application) is empty")
    return Parsed(header=header, adt=_adt(message), text=text)


# Only these segments are read (the first of each); python-hl7 parses every segment it is given, and real
# ADT messages carry many more (NK1, OBX, AL1, DG1, IN1, Z-segments), all kept in the raw message.
_READ = ("MSH", "EVN", "PID", "PV1", "MRG")


def _segments_we_read(text: str) -> str:
    seen: dict[str, str] = {}
    for segment in text.split("\r"):
        name = segment[:3]
        if name in _READ and name not in seen:
            seen[name] = segment
    return "\r".join(seen[name] for name in _READ if name in seen)


def _get(message: Any, segment: str, field: int, rep: int = 1, comp: int = 1) -> str:
    try:
        value = message.extract_field(segment, 1, field, rep, comp, 1)
    except (IndexError, KeyError, HL7Exception):
        return ""
    return str(value).strip()


def _repetitions(message: Any, segment: str, field: int) -> int:
    try:
        seg = message.segment(segment)
    except KeyError:
        return 0
    if field >= len(seg):
        return 0
    value = seg(field)
    return len(value) if isinstance(value, list) else 1


def _header(message: Any, field_sep: str, encoding: str) -> Header:
    event = _get(message, "MSH", 9, 1, 2) or _get(message, "EVN", 1)
    return Header(
        field_separator=field_sep,
        encoding_characters=encoding,
        sending_application=_get(message, "MSH", 3),
        sending_facility=_get(message, "MSH", 4),
        receiving_application=_get(message, "MSH", 5),
        receiving_facility=_get(message, "MSH", 6),
        message_time=parse_ts(_get(message, "MSH", 7)),
        message_type=_get(message, "MSH", 9, 1, 1)[:16],
        event_type=event[:16],
        control_id=_get(message, "MSH", 10)[:199],
        processing_id=_get(message, "MSH", 11)[:3],
        version=_get(message, "MSH", 12)[:16],
    )


def _identifiers(message: Any, segment: str, field: int) -> tuple[Identifier, ...]:
    found = []
    for rep in range(1, _repetitions(message, segment, field) + 1):
        value = _get(message, segment, field, rep, 1)
        if value:
            found.append(
                Identifier(
                    value, _get(message, segment, field, rep, 4), _get(message, segment, field, rep, 5)
                )
            )
    return tuple(found)


def _location(message: Any) -> str | None:
    parts = [_get(message, "PV1", 3, 1, c) for c in range(1, 5)]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts) or None


def _adt(message: Any) -> AdtFields:
    return AdtFields(
        identifiers=_identifiers(message, "PID", 3),
        prior_identifiers=_identifiers(message, "MRG", 1),
        visit_number=_get(message, "PV1", 19) or None,
        patient_class=_get(message, "PV1", 2) or None,
        location=_location(message),
        admit_time=parse_ts(_get(message, "PV1", 44)),
        discharge_time=parse_ts(_get(message, "PV1", 45)),
    )


def parse_ts(value: str) -> datetime | None:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]``) as an aware datetime; no offset is taken
    as UTC (the sender's local time is unknown here); unreadable → None (it is kept in the raw message)."""
    value = value.strip()
    if not value:
        return None
    offset = timedelta(0)
    for sign in ("+", "-"):
        if sign in value[4:]:
            idx = value.rindex(sign)
            zone = value[idx + 1 :]
            value = value[:idx]
            if len(zone) != 4 or not zone.isdigit():
                return None
            minutes = int(zone[:2]) * 60 + int(zone[2:])
            offset = timedelta(minutes=minutes if sign == "+" else -minutes)
            break
    whole, _, fraction = value.partition(".")
    if not whole.isdigit() or len(whole) not in (4, 6, 8, 10, 12, 14):
        return None
    padded = whole + "0101000000"[len(whole) - 4 :] if len(whole) < 14 else whole
    try:
        stamp = datetime.strptime(padded[:14], "%Y%m%d%H%M%S")  # noqa: DTZ007  (the zone is applied next)
    except ValueError:
        return None
    micros = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    return stamp.replace(microsecond=micros, tzinfo=timezone(offset)).astimezone(UTC)

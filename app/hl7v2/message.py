"""An HL7 v2 message parsed into what we keep: pure, no I/O.

Two readings. ``read_header`` reads MSH alone (and EVN-1 when MSH-9.2 is empty), by splitting the MSH
segment with the delimiters it declares and unescaping with python-hl7's rules: all the listener needs
to route, deduplicate and acknowledge, in microseconds, before its commit. ``parse`` adds the patient
and visit fields (PID, PV1, MRG) with python-hl7 (a full parse costs about a millisecond); the worker
runs it on the committed raw message (``app.hl7v2.service.parse_fields``), off the ACK path.

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
from hl7.util import unescape

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


_NO_FIELDS = AdtFields((), (), None, None, None, None, None)


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


class _Delimiters:
    """What python-hl7's ``unescape`` reads of a message: its escape character and separators."""

    __slots__ = ("esc", "separators")

    def __init__(self, field_sep: str, encoding: str) -> None:
        # python-hl7's order: segment, field, repetition, component, subcomponent.
        self.separators = "\r" + field_sep + encoding[1] + encoding[0] + encoding[3]
        self.esc = encoding[2]


def _first(value: str, delimiters: _Delimiters, component: int = 1) -> str:
    """Repetition 1, ``component``, subcomponent 1 of a field, unescaped and trimmed (python-hl7's
    ``extract_field(…, field, 1, component, 1)``)."""
    seps = delimiters.separators
    if component == 1 and not (
        seps[2] in value or seps[3] in value or seps[4] in value or delimiters.esc in value
    ):
        return value.strip()  # the usual MSH value: nothing to split or unescape
    parts = value.split(seps[2], 1)[0].split(seps[3])
    if component > len(parts):
        return ""
    return str(unescape(delimiters, parts[component - 1].split(seps[4], 1)[0])).strip()


def read_header(raw: bytes) -> tuple[Header, str]:
    """MSH (and EVN-1 when MSH-9.2 is empty) of one message, and the message decoded with its segments
    ended by ``\\r``. Raises ``MessageRejected`` (``unparseable_msh``) when MSH is unusable."""
    text = decode(normalize_terminators(raw))
    if not text.startswith("MSH") or len(text) < 8:
        raise MessageRejected("unparseable_msh", "the message does not start with an MSH segment")
    field_sep = text[3]
    if field_sep.isalnum() or field_sep in "\r ":
        raise MessageRejected("unparseable_msh", "MSH-1 is no field separator")
    encoding = text[4 : text.find(field_sep, 4)] if text.find(field_sep, 4) > 0 else ""
    if len(encoding) < 4 or len(set(encoding + field_sep)) != len(encoding) + 1:
        raise MessageRejected("unparseable_msh", "MSH-2 does not declare four distinct delimiters")
    delimiters = _Delimiters(field_sep, encoding)
    # fields[n - 1] is MSH-n for n >= 2 (MSH-1 is the separator itself).
    fields = text.split("\r", 1)[0].split(field_sep)
    fields += [""] * (12 - len(fields))

    def msh(n: int, component: int = 1) -> str:
        return _first(fields[n - 1], delimiters, component)

    event = msh(9, 2) or _evn_1(text, field_sep, delimiters)
    header = Header(
        field_separator=field_sep,
        encoding_characters=encoding,
        sending_application=msh(3),
        sending_facility=msh(4),
        receiving_application=msh(5),
        receiving_facility=msh(6),
        message_time=parse_ts(msh(7)),
        message_type=msh(9)[:16],
        event_type=event[:16],
        control_id=msh(10)[:199],
        processing_id=msh(11)[:3],
        version=msh(12)[:16],
    )
    if not header.control_id:
        raise MessageRejected("unparseable_msh", "MSH-10 (message control id) is empty")
    if not header.sending_application:
        raise MessageRejected("unparseable_msh", "MSH-3 (sending application) is empty")
    return header, text


def _evn_1(text: str, field_sep: str, delimiters: _Delimiters) -> str:
    start = text.find("\rEVN" + field_sep)
    if start < 0:
        return ""
    segment = text[start + 1 :].split("\r", 1)[0]
    fields = segment.split(field_sep)
    return _first(fields[1], delimiters) if len(fields) > 1 else ""


def parse(raw: bytes) -> Parsed:
    """Parse one message (the bytes of an MLLP frame): ``read_header`` and the PID/PV1/MRG fields.
    Raises ``MessageRejected`` when MSH is unusable."""
    header, text = read_header(raw)
    try:
        message = hl7.parse(_segments_we_read(text))
    except (HL7Exception, IndexError, KeyError, ValueError):
        message = None  # MSH was read above; fields python-hl7 cannot parse are left empty
    return Parsed(header=header, adt=_adt(message) if message is not None else _NO_FIELDS, text=text)


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
    micros = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    d = padded
    try:  # not strptime: this runs for every message before its ACK, and strptime costs ten times more
        stamp = datetime(
            int(d[:4]),
            int(d[4:6]),
            int(d[6:8]),
            int(d[8:10]),
            int(d[10:12]),
            int(d[12:14]),
            micros,
            tzinfo=UTC if not offset else timezone(offset),
        )
    except ValueError:
        return None
    return stamp.astimezone(UTC) if offset else stamp

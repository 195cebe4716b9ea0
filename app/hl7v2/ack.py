"""Original-mode acknowledgements: ``AA`` (committed), ``AE`` (not stored: send again), ``AR`` (refused:
do not send again as is). MSA-2 echoes MSH-10; a refusal names its reason in MSA-3 and in ERR (ERR-3 an
HL7 table 0357 code, ERR-8 the reason slug). Written with the delimiters the message declared; a message
whose MSH could not be read is answered with the standard ones. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime
from typing import Literal

from app.hl7v2.message import Header

AckCode = Literal["AA", "AE", "AR"]

# HL7 table 0357 (message error condition codes) for each reason.
_ERROR_CODES: dict[str, tuple[str, str]] = {
    "unparseable_msh": ("102", "Data type error"),
    "unknown_facility": ("204", "Unknown key identifier"),
    "peer_not_allowed_for_facility": ("204", "Unknown key identifier"),
    "unsupported_message_type": ("200", "Unsupported message type"),
    "message_too_large": ("207", "Application internal error"),
    "database_unavailable": ("207", "Application internal error"),
}
_DEFAULT = ("|", "^~\\&")
_ids = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


def _control_id(now: datetime) -> str:
    return f"ACK{now:%Y%m%d%H%M%S}{_PREFIX}{next(_ids)}"


def _clean(value: str, header: Header | None) -> str:
    """A value echoed from the message, with the delimiters removed (never re-interpreted)."""
    seps = (header.field_separator + header.encoding_characters) if header else "".join(_DEFAULT)
    for ch in seps + "\r\n":  # a few replaces, not a generator per character: this runs for every ACK
        if ch in value:
            value = value.replace(ch, "")
    return value


def build_ack(
    header: Header | None, code: AckCode, *, now: datetime, reason: str | None = None, control_id: str = ""
) -> bytes:
    """The ACK for ``header`` (``None``: the MSH was unreadable; ``control_id`` is then whatever could be
    recovered). ASCII/UTF-8 bytes, segments ended by ``\\r``."""
    fs, enc = (header.field_separator, header.encoding_characters) if header else _DEFAULT
    comp = enc[0]
    event = header.event_type if header else ""
    echoed = _clean(header.control_id if header else control_id, header)
    msh = fs.join(
        [
            "MSH",
            enc,
            _clean(header.receiving_application, header) if header else "EHR-INGEST",
            _clean(header.receiving_facility, header) if header else "",
            _clean(header.sending_application, header) if header else "",
            _clean(header.sending_facility, header) if header else "",
            f"{now:%Y%m%d%H%M%S}",
            "",
            comp.join(["ACK", _clean(event, header), "ACK"]) if event else "ACK",
            _control_id(now),
            _clean(header.processing_id, header) or "P" if header else "P",
            _clean(header.version, header) or "2.5.1" if header else "2.5.1",
        ]
    )
    segments = [msh, fs.join(["MSA", code, echoed, *([reason] if reason else [])])]
    if reason:
        number, text = _ERROR_CODES.get(reason, _ERROR_CODES["database_unavailable"])
        severity = "E"
        segments.append(
            fs.join(["ERR", "", "", comp.join([number, text, "HL70357"]), severity, "", "", "", reason])
        )
    return ("\r".join(segments) + "\r").encode("utf-8")


def recover_control_id(raw: bytes) -> str:
    """MSH-10 of a message whose MSH the parser refused, when it can still be found (to echo in MSA-2)."""
    text = raw[:4096].decode("latin-1")
    if not text.startswith("MSH") or len(text) < 4:
        return ""
    fields = text.split("\r", 1)[0].split("\n", 1)[0].split(text[3])
    return fields[9][:199] if len(fields) > 9 else ""

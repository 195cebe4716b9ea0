"""Parsing ADT messages (python-hl7) and building their ACKs."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from app.errors import MessageRejected
from app.hl7v2.ack import build_ack, recover_control_id
from app.hl7v2.message import parse, parse_ts, read_header
from tests.app.hl7v2.samples import AUTHORITY, a01, a08_v23_custom, a40

NOW = datetime(2026, 12, 2, 13, 0, tzinfo=UTC)


def test_a01_v251_gives_header_mrn_of_the_authority_and_visit_fields() -> None:
    parsed = parse(a01())
    h = parsed.header
    assert (h.sending_application, h.sending_facility, h.message_type, h.event_type) == (
        "EPIC",
        "GENHOSP",
        "ADT",
        "A01",
    )
    assert (h.control_id, h.version, h.processing_id) == ("MSG00001", "2.5.1", "P")
    assert h.message_time == datetime(2026, 12, 2, 18, 5, 7, tzinfo=UTC)
    assert parsed.adt.mrn(AUTHORITY) == "M0000001"  # the second repetition (SSA) is not the MRN
    assert parsed.adt.mrn("SSA") == "999-99-9999"
    assert parsed.adt.patient_class == "I"
    assert parsed.adt.location == "4WEST^401^A^GENHOSP"
    assert parsed.adt.visit_number == "V0000001"
    assert parsed.adt.admit_time == datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
    assert parsed.adt.discharge_time is None
    assert "ZPD|site specific|kept" in parsed.text  # Z-segments stay in the kept message


def test_v23_with_custom_delimiters_newlines_and_the_event_in_evn() -> None:
    parsed = parse(a08_v23_custom())
    assert parsed.header.field_separator == "#"
    assert parsed.header.encoding_characters == "$*!@"
    assert (parsed.header.event_type, parsed.header.version) == ("A08", "2.3")
    assert parsed.adt.mrn("NORTH") == "M0000002"
    assert parsed.adt.location == "CLINIC^12"
    assert "\n" not in parsed.text


def test_escape_sequences_are_unescaped_with_the_declared_escape_character() -> None:
    raw = a08_v23_custom().replace(b"PV1#1#O#CLINIC$12#", b"PV1#1#O#EAST!F!WING$12#")
    assert parse(raw).adt.location == "EAST#WING^12"


def test_a40_gives_the_prior_mrn_from_mrg_trimmed_and_crlf_terminators() -> None:
    parsed = parse(a40())
    assert parsed.header.event_type == "A40"
    assert parsed.adt.mrn(AUTHORITY) == "M0000001"
    assert parsed.adt.prior_mrn(AUTHORITY) == "M0000009"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"PID|1||x",
        b"MSH",
        b"MSH|^~|x",
        b"MSH|^~\\&|EPIC|GENHOSP|||||ADT^A01||P|2.5.1",  # no control id
        b"MSH|^~\\&||GENHOSP|||||ADT^A01|C1|P|2.5.1",  # no sending application
    ],
)
def test_an_unusable_msh_is_rejected_with_its_reason(raw: bytes) -> None:
    with pytest.raises(MessageRejected) as err:
        parse(raw)
    assert err.value.reason == "unparseable_msh"


def test_dtm_precisions_and_offsets() -> None:
    assert parse_ts("2026") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_ts("20261202130507.5+0100") == datetime(2026, 12, 2, 12, 5, 7, 500000, tzinfo=UTC)
    assert parse_ts("not a time") is None
    assert parse_ts("20261340") is None


def test_aa_echoes_msh10_swaps_sender_and_receiver_and_parses_as_hl7() -> None:
    ack = hl7.parse(build_ack(parse(a01()).header, "AA", now=NOW).decode())
    assert str(ack.segment("MSA")(1)) == "AA"
    assert str(ack.segment("MSA")(2)) == "MSG00001"
    assert str(ack.segment("MSH")(5)) == "EPIC"
    assert str(ack.segment("MSH")(12)) == "2.5.1"


def test_ar_with_custom_delimiters_names_its_reason_in_msa3_and_err() -> None:
    raw = build_ack(parse(a08_v23_custom()).header, "AR", now=NOW, reason="unknown_facility")
    ack = hl7.parse(raw.decode())
    assert str(ack.segment("MSA")(1)) == "AR"
    assert str(ack.segment("MSA")(3)) == "unknown_facility"
    assert str(ack.segment("ERR")(8)) == "unknown_facility"
    assert raw.startswith(b"MSH#$*!@#")


def test_an_unreadable_msh_is_answered_with_standard_delimiters_and_the_recovered_control_id() -> None:
    raw = b"MSH|^~|EPIC|GENHOSP|||||ADT^A01|C77|P|2.5.1"
    ack = build_ack(None, "AR", now=NOW, reason="unparseable_msh", control_id=recover_control_id(raw))
    assert b"\rMSA|AR|C77|unparseable_msh\r" in ack


def test_the_mrn_authority_is_the_namespace_of_a_full_hd() -> None:
    """Epic sends PID-3.4 as a whole HD (``EPI&<oid>&ISO``, as ehrsim does): ``mrn_authority`` names HD.1."""
    raw = a01().replace(f"^^^{AUTHORITY}^MR".encode(), b"^^^EPI&1.2.840.114350.1.13.0.1.7.5.737384.14&ISO^MR")
    parsed = parse(raw)
    assert parsed.adt.mrn("EPI") == "M0000001"
    assert parsed.adt.mrn("EPI&1.2.840.114350.1.13.0.1.7.5.737384.14&ISO") is None


def _escaped_msh(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|EP\\T\\IC^x|GEN\\F\\HOSP&sub|EHRI|EHRI|20261202130507.25+0100||ADT^A08^ADT_A01|{control_id}"
        "|P^T|2.5.1~2.5\rPID|1||M1^^^GENHOSP^MR"
    ).encode()


@pytest.mark.parametrize(
    "raw",
    [
        a01(),
        a08_v23_custom(),
        a40(),
        _escaped_msh("C\\S\\1~rep"),
        b"MSH|^~\\&|EPIC|||||||C9",
        a01("é\\X41\\"),
    ],
)
def test_the_hand_read_msh_gives_what_python_hl7_reads(raw: bytes) -> None:
    """``read_header`` (the listener's MSH reading, no python-hl7 parse) against python-hl7's own."""
    header, text = read_header(raw)
    message = hl7.parse(text)

    def field(n: int, component: int = 1) -> str:
        try:
            return str(message.extract_field("MSH", 1, n, 1, component, 1)).strip()
        except IndexError:
            return ""

    evn = message.extract_field("EVN", 1, 1, 1, 1, 1) if "\rEVN" in text else ""
    assert header.sending_application == field(3)
    assert header.sending_facility == field(4)
    assert (header.receiving_application, header.receiving_facility) == (field(5), field(6))
    assert header.message_time == parse_ts(field(7))
    assert (header.message_type, header.event_type) == (field(9), field(9, 2) or str(evn).strip())
    assert header.control_id == field(10)
    assert (header.processing_id, header.version) == (field(11), field(12))

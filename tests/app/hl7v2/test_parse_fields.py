"""The worker's half of the parse: the listener commits after reading MSH; ``parse_fields`` fills the
PID/PV1/MRG columns (python-hl7) before a row can be claimed, whatever the message holds."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.hl7v2.service import claim
from tests.app.hl7v2.conftest import Client, Running, msa, parse_committed
from tests.app.hl7v2.samples import a01


def _fields(engine: Engine, control_id: str) -> tuple[object, ...]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT parsed, mrn, visit_number FROM adt_inbox WHERE control_id = :c"), {"c": control_id}
        ).one()
    return tuple(row)


def test_an_unparsed_row_is_not_claimed_until_its_fields_are_read(listener: Running, clean: Engine) -> None:
    client = Client(listener.port)
    assert msa(client.send(a01("P1", mrn="M0000011")))[0] == "AA"
    client.close()
    with Session(clean) as session, session.begin():
        assert claim(session, "adt-fac", patients=10, lease=timedelta(minutes=1)).patients == []
    assert parse_committed(clean) == 1
    assert _fields(clean, "P1") == (True, "M0000011", "V0000001")
    with Session(clean) as session, session.begin():
        [work] = claim(session, "adt-fac", patients=10, lease=timedelta(minutes=1)).patients
    assert work.mrn == "M0000011"
    assert work.rows[0].visit_number == "V0000001"


def test_rows_whose_fields_cannot_be_stored_as_sent_are_parsed_without_failing_the_others(
    listener: Running, clean: Engine
) -> None:
    client = Client(listener.port)
    for message in (
        a01("NUL", mrn="M\x00001"),  # Postgres text holds no NUL
        a01("LONG", mrn="9" * 6000),  # no MRN, and too long for the patient index
        a01("NOPID").split(b"\rPID")[0],  # MSH and EVN only
        a01("GOOD", mrn="M0000012"),
    ):
        assert msa(client.send(message))[0] == "AA"
    client.close()
    assert parse_committed(clean) == 4
    assert _fields(clean, "NUL") == (True, "M\ufffd001", "V0000001")
    assert _fields(clean, "LONG") == (True, None, "V0000001")
    assert _fields(clean, "NOPID") == (True, None, None)
    assert _fields(clean, "GOOD") == (True, "M0000012", "V0000001")
    assert parse_committed(clean) == 0


def test_a_message_that_asks_for_no_work_is_parsed_too_for_adt_events(
    listener: Running, clean: Engine
) -> None:
    client = Client(listener.port)
    msa(client.send(a01("A01-ZZ").replace(b"ADT^A01^ADT_A01", b"ADT^A99")))
    client.close()
    deadline = time.monotonic() + 5  # the worker is rung for it: it has fields to parse
    while "adt-fac" not in listener.rings and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "adt-fac" in listener.rings
    assert parse_committed(clean) == 1
    with clean.connect() as conn:
        status = conn.execute(text("SELECT status, mrn FROM adt_events WHERE control_id = 'A01-ZZ'")).one()
    assert tuple(status) == ("done", "M0000001")

"""Hostile input at the real MLLP listener (real TCP, real Postgres): every frame a sender can write is
answered (AA, AR or AE, never a crash or a silent hang), and one sender's bad messages never fail another
sender's good ones."""

from __future__ import annotations

import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from tests.app.hl7v2.conftest import Client, Running, msa
from tests.app.hl7v2.samples import a01

GOOD = a01("TEMPLATE")


def _mutated(data: st.DataObject) -> bytes:
    """A valid ADT message with bytes replaced, inserted or cut: NUL, control characters, invalid UTF-8,
    delimiters, very long fields, an MSH missing its separators."""
    message = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(message)))
        junk = data.draw(
            st.one_of(
                st.binary(max_size=40).filter(lambda b: b"\x0b" not in b and b"\x1c" not in b),
                st.sampled_from(
                    [b"\x00", b"\xff\xfe", b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"x" * 4000]
                ),
            )
        )
        cut = data.draw(st.integers(0, 8))
        message[at : at + cut] = junk
    return bytes(message)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutated_message_is_answered_and_the_listener_keeps_taking_good_ones(
    listener: Running, clean: Engine, data: st.DataObject
) -> None:
    client = Client(listener.port)
    try:
        ack = client.send(_mutated(data))
        assert msa(ack)[0] in {"AA", "AR", "AE"}
    except ConnectionError:
        pass  # a frame above the bound may end the connection after its AR: allowed, never a hang
    finally:
        client.close()
    good = Client(listener.port)
    assert msa(good.send(a01("GOOD-AFTER")))[0] == "AA"
    good.close()


def test_a_hostile_sender_never_fails_a_good_senders_messages(listener: Running, clean: Engine) -> None:
    hostile = [
        a01("NUL1", mrn="M\x00001"),  # Postgres text cannot hold NUL
        a01("X" * 5000),  # a control id longer than any column
        b"MSH|^~\\&|EPIC|GENHOSP|||||ADT^A01|\xff\xfe|P|2.5.1\rPID|1||\xc3\x28^^^GENHOSP^MR",
        b"MSH|",
        a01("LONGMRN", mrn="9" * 6000),
    ]
    answers: list[str] = []

    def good_sender() -> None:
        client = Client(listener.port)
        for n in range(60):
            answers.append(msa(client.send(a01(f"OK{n}", mrn=f"M{n:07d}")))[0])
        client.close()

    thread = threading.Thread(target=good_sender)
    thread.start()
    bad = Client(listener.port)
    refused: list[str] = []
    for _ in range(5):
        for message in hostile:
            try:
                refused.append(msa(bad.send(message))[0])
            except ConnectionError:
                bad = Client(listener.port)
    bad.close()
    thread.join(timeout=60)
    assert answers == ["AA"] * 60
    assert set(refused) <= {"AA", "AR", "AE"}
    with clean.connect() as conn:
        stored = conn.scalar(text("SELECT count(*) FROM adt_inbox WHERE control_id LIKE 'OK%'"))
    assert stored == 60

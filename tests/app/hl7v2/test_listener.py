"""The MLLP listener over a real TCP socket with real Postgres: committed before AA, duplicates stored
once, AR with quarantine, AE (never AA) when Postgres cannot take a message, peer filtering, framing."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from sqlalchemy import Engine, text

from app.hl7v2.mllp import END, START, frame
from tests.app.hl7v2.conftest import Client, Running, msa, parse_committed, start_listener
from tests.app.hl7v2.samples import a01, a40, oru


def _rows(engine: Engine, sql: str, **params: object) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def test_each_message_is_committed_before_its_aa_and_msa2_echoes_msh10(
    listener: Running, clean: Engine
) -> None:
    client = Client(listener.port)
    for n in range(5):
        ack = client.send(a01(f"C{n}", mrn=f"M{n:07d}"))
        assert msa(ack)[:2] == ["AA", f"C{n}"]
        # The AA is out: the row must be visible to any other connection now (MSH read; the worker
        # parses the rest).
        assert _rows(
            clean, "SELECT status, parsed, raw LIKE '%PID|%' FROM adt_inbox WHERE control_id = :c", c=f"C{n}"
        ) == [("pending", False, True)]
    client.close()
    assert parse_committed(clean) == 5
    assert _rows(clean, "SELECT mrn, parsed FROM adt_inbox ORDER BY control_id") == [
        (f"M{n:07d}", True) for n in range(5)
    ]
    deadline = time.monotonic() + 5
    while "adt-fac" not in listener.rings and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "adt-fac" in listener.rings


def test_adt_events_view_has_the_consumer_columns(listener: Running, clean: Engine) -> None:
    Client(listener.port).send(a01("V1"))
    parse_committed(clean)
    [row] = _rows(
        clean,
        "SELECT facility_id, event_type, control_id, mrn, visit_number, patient_class, location,"
        " admit_time IS NOT NULL, discharge_time, patient_id, message_time IS NOT NULL FROM adt_events",
    )
    assert row == (
        "adt-fac",
        "A01",
        "V1",
        "M0000001",
        "V0000001",
        "I",
        "4WEST^401^A^GENHOSP",
        True,
        None,
        None,
        True,
    )


def test_a_duplicate_control_id_is_acknowledged_again_and_stored_once(
    listener: Running, clean: Engine
) -> None:
    first, second = Client(listener.port), Client(listener.port)
    assert msa(first.send(a01("DUP1")))[0] == "AA"
    assert msa(second.send(a01("DUP1")))[0] == "AA"
    assert msa(first.send(a01("DUP1")))[0] == "AA"
    assert _rows(clean, "SELECT count(*) FROM adt_inbox WHERE control_id = 'DUP1'") == [(1,)]


def test_many_messages_in_one_write_split_across_reads_are_answered_in_order(
    listener: Running, clean: Engine
) -> None:
    stream = b"".join(frame(a01(f"S{n}")) for n in range(6))
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
    for i in range(0, len(stream), 7):  # 7-byte writes: every frame split over many reads
        sock.sendall(stream[i : i + 7])
    client = Client.__new__(Client)
    client.sock, client._buffer = sock, b""
    assert [msa(client.read_ack())[1] for _ in range(6)] == [f"S{n}" for n in range(6)]
    sock.close()
    assert _rows(clean, "SELECT count(*) FROM adt_inbox") == [(6,)]


def test_a_frame_without_its_trailing_cr_is_answered(listener: Running, clean: Engine) -> None:
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
    sock.sendall(START + a40("NOCR") + END)
    client = Client.__new__(Client)
    client.sock, client._buffer = sock, b""
    assert msa(client.read_ack())[:2] == ["AA", "NOCR"]
    sock.close()
    parse_committed(clean)
    assert _rows(clean, "SELECT prior_mrn FROM adt_inbox WHERE control_id = 'NOCR'") == [("M0000009",)]


@pytest.mark.parametrize(
    ("message", "reason", "facility"),
    [
        (b"MSH|^~|EPIC|GENHOSP|||||ADT^A01|BAD1|P|2.5.1", "unparseable_msh", None),
        (b"NOT HL7 AT ALL", "unparseable_msh", None),
        (a01("UNK1", app="CERNER", fac="ELSEWHERE"), "unknown_facility", None),
        (a01("PEER1", app="ORACLE"), "peer_not_allowed_for_facility", None),
        (oru("ORU1"), "unsupported_message_type", "adt-fac"),
        (a01("BIG1") + b"\rZXX|" + b"x" * 9000, "message_too_large", "adt-fac"),
    ],
)
def test_refused_messages_get_ar_with_a_reason_and_are_kept_in_quarantine(
    listener: Running, clean: Engine, message: bytes, reason: str, facility: str | None
) -> None:
    client = Client(listener.port)
    fields = msa(client.send(message))
    assert fields[0] == "AR"
    assert fields[2] == reason
    assert _rows(clean, "SELECT reason, facility_id FROM adt_quarantine") == [(reason, facility)]
    assert _rows(clean, "SELECT count(*) FROM adt_inbox") == [(0,)]
    # The connection stays usable: the next message is taken.
    assert msa(client.send(a01("AFTER")))[0] == "AA"


def test_the_same_rejected_message_again_counts_deliveries(listener: Running, clean: Engine) -> None:
    client = Client(listener.port)
    for _ in range(3):
        assert msa(client.send(oru("ORU2")))[0] == "AR"
    assert _rows(clean, "SELECT deliveries FROM adt_quarantine") == [(3,)]


def test_postgres_connection_killed_gives_no_aa_and_the_next_message_is_stored(
    listener: Running, clean: Engine
) -> None:
    client = Client(listener.port)
    assert msa(client.send(a01("K0")))[0] == "AA"
    with clean.begin() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'ehri_mllp_test'"
            )
        ).scalar()
    assert killed
    fields = msa(client.send(a01("K1")))
    assert fields[0] == "AE"
    assert fields[1] == "K1"
    assert _rows(clean, "SELECT count(*) FROM adt_inbox WHERE control_id = 'K1'") == [(0,)]
    # The sender resends: now stored, once.
    assert msa(client.send(a01("K1")))[0] == "AA"
    assert _rows(clean, "SELECT count(*) FROM adt_inbox WHERE control_id = 'K1'") == [(1,)]


def test_postgres_unreachable_never_gives_aa(mllp_engine: Engine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens here once closed
    gen = start_listener(f"postgresql://postgres@127.0.0.1:{dead_port}/nowhere", mllp_engine)
    running = next(gen)
    try:
        client = Client(running.port)
        for n in range(3):
            assert msa(client.send(a01(f"U{n}")))[0] == "AE"
        assert msa(client.send(oru("U9")))[0] == "AE"  # not even quarantine: the sender must resend
    finally:
        next(gen, None)


def test_a_peer_no_facility_allows_is_closed_before_reading(mllp_engine: Engine, mllp_database: str) -> None:
    from sqlalchemy.orm import Session

    from app.hl7v2.routing import Directory, load_directory

    gen = start_listener("postgresql://unused", mllp_engine)
    running = next(gen)
    try:
        with Session(mllp_engine) as session:
            only_remote = [f for f in load_directory(session).facilities if f.id == "adt-remote"]
        running.listener.directory = Directory(only_remote)
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        with contextlib.suppress(OSError):  # the listener may have closed already
            sock.sendall(frame(a01("P1")))
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:  # closed with our bytes unread: a reset rather than a FIN
            answer = b""
        assert answer == b""  # closed, no ACK
        sock.close()
    finally:
        next(gen, None)


def test_an_idle_connection_is_closed(listener: Running) -> None:
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
    started = time.monotonic()
    assert sock.recv(1024) == b""
    assert time.monotonic() - started < 8
    sock.close()


def test_concurrent_connections_are_group_committed_and_each_gets_its_aa(
    mllp_database: str, clean: Engine
) -> None:
    import threading

    from app.cli.mllp import make_url_conninfo

    gen = start_listener(make_url_conninfo(mllp_database), clean, loops=2)
    running = next(gen)
    answers: dict[str, str] = {}

    def sender(i: int) -> None:
        client = Client(running.port)
        for n in range(40):
            answers[f"G{i}-{n}"] = msa(client.send(a01(f"G{i}-{n}")))[0]
        client.close()

    try:
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        next(gen, None)
    assert set(answers.values()) == {"AA"}
    assert len(answers) == 320
    assert _rows(clean, "SELECT count(*) FROM adt_inbox") == [(320,)]

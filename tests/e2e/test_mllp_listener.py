"""The real ``ehr-ingest mllp serve`` process: no PID/PV1 value in any of its log lines (at DEBUG, through
accepted, duplicate and refused messages), its metrics, and ``kill -9`` while messages arrive: every
message answered AA is in Postgres, and the senders' resends of the rest are stored once."""

from __future__ import annotations

import json
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from devstack.database import clear_redis_prefix
from devstack.processes import Proc, Stack, free_port, wait_until
from devstack.scenario import Scenario
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile
from tests.app.hl7v2.conftest import HL7V2, Client, msa
from tests.app.hl7v2.samples import a01, oru
from tests.conftest import REDIS_URL, make_facility, migrated_database

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"  # the e2e scenario's facility (tests/e2e/conftest.py)


@dataclass
class Listening:
    stack: Stack
    database_url: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def start(self) -> tuple[Proc, int, int]:
        port, metrics = free_port(), free_port()
        argv = [
            str(Path(sys.executable).parent / "ehr-ingest"),
            "mllp",
            "serve",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics),
        ]
        proc = self.stack.start(f"mllp-{len(self.procs)}", argv, env=self.env)
        self.procs.append(proc)
        wait_until(lambda: _accepts(port) or not proc.alive(), timeout=30, what="the MLLP listener")
        assert proc.alive(), proc.log_tail()
        return proc, port, metrics

    def stored(self) -> set[str]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return set(conn.execute(text("SELECT control_id FROM adt_inbox")).scalars())
        finally:
            engine.dispose()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture
def listening(tmp_path: Path, run_id: str) -> Iterator[Listening]:
    prefix = f"{run_id}:mllp{uuid.uuid4().hex[:6]}:"
    with migrated_database(f"{run_id}_mllp_{uuid.uuid4().hex[:6]}") as url:
        engine = create_engine(url)
        with Session(engine) as session:
            facility = make_facility(session, "adt-fac")
            facility.hl7v2 = HL7V2
            facility.mrn_system = "urn:oid:1.2.3.4"
            session.commit()
        engine.dispose()
        env = {
            "EHRI_DATABASE_URL": url,
            "EHRI_REDIS_URL": REDIS_URL,
            "EHRI_REDIS_PREFIX": prefix,
            "EHRI_LOG_LEVEL": "DEBUG",
            "EHRI_LOG_FORMAT": "json",
        }
        stack = Stack(tmp_path, dict(__import__("os").environ))
        try:
            yield Listening(stack, url, env)
        finally:
            tails = {p.name: p.log_tail(30) for p in stack.procs}
            stack.stop()
            clear_redis_prefix(REDIS_URL, prefix)
            for name, tail in tails.items():
                print(f"--- {name}\n{tail}")


def _patient_message(n: int) -> tuple[bytes, list[str]]:
    mrn, name, visit = f"QX{n:05d}MRN", f"ZEBRAFAMILY{n}", f"VISITQ{n:04d}"
    raw = a01(f"LOG{n}", mrn=mrn).replace(b"TESTPATIENT^ALPHA", f"{name}^QUENTINA".encode())
    raw = raw.replace(b"V0000001", visit.encode()).replace(b"4WEST^401", b"WARDQZ^77")
    return raw, [mrn, name, "QUENTINA", visit, "WARDQZ", "19700101", "999-99-9999"]


def test_no_pid_or_pv1_value_reaches_a_log_line_and_metrics_count_outcomes(listening: Listening) -> None:
    proc, port, metrics = listening.start()
    secrets: list[str] = []
    client = Client(port)
    for n in range(5):
        raw, values = _patient_message(n)
        secrets += values
        assert msa(client.send(raw))[0] == "AA"
        assert msa(client.send(raw))[0] == "AA"  # duplicate
    bad, values = _patient_message(99)
    secrets += values
    assert msa(client.send(bad.replace(b"EPIC|GENHOSP", b"NOBODY|NOWHERE")))[0] == "AR"
    assert msa(client.send(oru("LOGORU")))[0] == "AR"
    client.close()
    body = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
    assert 'ehri_mllp_messages_total{event="A01",facility="adt-fac",outcome="stored"} 5.0' in body
    assert 'ehri_mllp_messages_total{event="A01",facility="adt-fac",outcome="duplicate"} 5.0' in body
    assert 'outcome="unknown_facility"} 1.0' in body
    assert "ehri_mllp_ack_seconds_bucket" in body
    proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert "hl7v2.rejected" in log  # the log is not empty: the scan below means something
    leaked = [value for value in secrets if value in log]
    assert leaked == []


@dataclass
class Sent:
    attempted: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _sender(port: int, prefix: str, count: int, sent: Sent) -> None:
    try:
        client = Client(port)
        for n in range(count):
            control = f"{prefix}-{n}"
            with sent.lock:
                sent.attempted.add(control)
            if msa(client.send(a01(control, mrn=f"M{n:07d}")))[0] == "AA":
                with sent.lock:
                    sent.acked.add(control)
    except OSError:
        return  # the listener died: what was not ACKed is resent below


def test_kill_9_while_messages_arrive_loses_no_aa_and_resends_are_stored_once(listening: Listening) -> None:
    proc, port, _ = listening.start()
    sent = Sent()
    senders = [
        threading.Thread(target=_sender, args=(port, f"K{i}", 100_000, sent), daemon=True) for i in range(4)
    ]
    for t in senders:
        t.start()
    wait_until(lambda: len(sent.acked) >= 300, timeout=60, what="300 ACKs")
    proc.kill()  # SIGKILL to the process group, mid-stream
    for t in senders:
        t.join(timeout=30)
    with sent.lock:
        acked, attempted = set(sent.acked), set(sent.attempted)
    stored = listening.stored()
    print(f"\nkill -9: {len(acked)} AA, {len(attempted)} sent, {len(stored)} stored at the kill")
    assert acked <= stored, f"{len(acked - stored)} AA'd messages are not in Postgres"

    # The senders resend what they got no AA for (interface engines do): each is stored once.
    _, port, _ = listening.start()
    client = Client(port)
    for control in sorted(attempted - acked):
        n = int(control.split("-")[1])
        assert msa(client.send(a01(control, mrn=f"M{n:07d}")))[0] == "AA"
    client.close()
    engine = create_engine(listening.database_url)
    try:
        with engine.connect() as conn:
            total, distinct = conn.execute(
                text("SELECT count(*), count(DISTINCT control_id) FROM adt_inbox")
            ).one()
    finally:
        engine.dispose()
    assert total == distinct == len(attempted)
    assert listening.stored() == attempted


def test_an_adt_message_reaches_the_real_worker_which_resolves_the_patient(scenario: Scenario) -> None:
    """The composition root end to end: the listener process commits and rings, a real Celery worker
    runs ``hl7v2.process_facility`` against ehrsim over HTTP, and ``adt_events`` shows the patient."""
    stack = scenario.start(workers=1, beat=False)
    scenario.make_changes(FACILITY, 10)
    assert scenario.wait_for_ledger(FACILITY, timeout=90).ok
    engine = create_engine(scenario.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE facilities SET hl7v2 = CAST(:b AS jsonb), mrn_system = :s WHERE id = :f"),
                {
                    "b": json.dumps(
                        {**HL7V2, "refresh": ["Patient", "Condition"]}
                    ),  # generic serves no Encounter
                    "s": mrn_system(get_profile("generic"), FACILITY),
                    "f": FACILITY,
                },
            )
            patient_id, mrn = conn.execute(text("SELECT patient_id, mrn FROM patients LIMIT 1")).one()
        port = free_port()
        argv = [str(Path(sys.executable).parent / "ehr-ingest"), "mllp", "serve", "--port", str(port)]
        stack.start("mllp", [*argv, "--metrics-port", "0"])
        wait_until(lambda: _accepts(port), timeout=30, what="the MLLP listener")
        assert msa(Client(port).send(a01("E2E1", mrn=mrn)))[0] == "AA"

        def resolved() -> bool:
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT status, patient_id FROM adt_events WHERE control_id = 'E2E1'")
                ).one()
            return tuple(row) == ("done", patient_id)

        wait_until(resolved, timeout=60, what="the ADT event resolved by the worker")
    finally:
        engine.dispose()

"""Issue 13's first "Done when", end to end with real processes: an Epic-profile facility that pushes no
FHIR notifications announces ~300 Patient and Encounter changes only over HL7 v2 ADT (ehrsim's MLLP
sender), with connection drops, duplicates, reordering, split frames and lost ACKs injected, to the real
``ehr-ingest mllp serve``; Celery workers and beat resolve the patients and re-read them over FHIR.
Converged means: every change is in Postgres at ehrsim's current version (the ledger check, lost = 0;
Epic serves no ``meta``, so the check compares each resource's content with ehrsim's), every message
ehrsim saw ``AA`` is stored (``check_adt_ledger``), and ``adt_events`` has one row per distinct control
id. An Encounter ehrsim deletes (A11, ~5% of changes), often before the worker read it, must end a
tombstone: the patient's search no longer lists it, so the worker reads it by the id PV1-19 carries."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from app.db.engine import make_engine, make_sessionmaker
from app.facilities.service import apply_facilities, load_facilities_file
from devstack.ledger import AdtLedgerReport, LedgerReport, check_adt_ledger
from devstack.processes import free_port, wait_until
from devstack.scenario import Scenario
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"  # the e2e scenario's facility (tests/e2e/conftest.py)
CHANGES = 300
SENDING_APPLICATION, SENDING_FACILITY = "EPIC", "GENHOSP"
FAULTS = {
    "drop_connection_rate": 0.05,
    "ack_lost_rate": 0.03,
    "duplicate_rate": 0.1,
    "reorder_rate": 0.1,
    "split_rate": 0.1,
}


def _adt_only_epic(scenario: Scenario, mllp_port: int) -> None:
    """Turn the scenario's facility into an Epic one with an MLLP feed and no FHIR Subscription, on both
    sides (ehrsim's config and ours), and apply ours."""
    sim_path, our_path = scenario.workdir / "ehrsim.yaml", scenario.workdir / "facilities.yaml"
    sim: dict[str, Any] = yaml.safe_load(sim_path.read_text())
    ours: dict[str, Any] = yaml.safe_load(our_path.read_text())
    (fac,) = sim["facilities"]
    fac.pop("webhook")  # no FHIR notifications at all: ADT is the only announcement
    fac.update(
        profile="epic",
        time_scale=0.001,
        mllp={
            "port": mllp_port,
            "sending_application": SENDING_APPLICATION,
            "sending_facility": SENDING_FACILITY,
            "ack_timeout_s": 0.5,  # a lost ACK is resent within half a second
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.5,
        },
        faults={"mllp": FAULTS},
    )
    (our,) = ours["facilities"]
    our.update(
        vendor="epic",
        mrn_system=mrn_system(get_profile("epic"), FACILITY),
        hl7v2={
            "sending_application": SENDING_APPLICATION,
            "sending_facility": SENDING_FACILITY,
            "allowed_peers": ["127.0.0.1"],
            "mrn_authority": "EPI",  # PID-3.4's namespace (HD.1) of ehrsim's EPI&<oid>&ISO
            "refresh": ["Patient", "Encounter"],
            "visit_is_encounter_id": True,  # ehrsim's PV1-19.1 is the Encounter's FHIR id
        },
        # The simulated EHR is local: the test measures the ADT path, not the facility's request budget
        # (the default 20 requests/s made a loaded CI machine miss the deadline with work still queued).
        limits={"requests_per_second": 1000, "burst": 100, "concurrency": 8},
    )
    sim_path.write_text(yaml.safe_dump(sim))
    our_path.write_text(yaml.safe_dump(ours))
    engine = make_engine(scenario.database_url, pool_size=1)
    try:
        with make_sessionmaker(engine).begin() as session:
            apply_facilities(session, load_facilities_file(our_path))
    finally:
        engine.dispose()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _mllp_state(scenario: Scenario) -> dict[str, Any]:
    response = httpx.get(f"{scenario.sim_url}/_admin/{FACILITY}/mllp", timeout=10)
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def _stored(scenario: Scenario) -> tuple[set[str], int, int]:
    """The facility's distinct control ids in ``adt_events``, its row count, and ``adt_inbox``'s."""
    engine = create_engine(scenario.database_url)
    try:
        with engine.connect() as conn:
            ids = set(
                conn.execute(
                    text("SELECT control_id FROM adt_events WHERE facility_id = :f"), {"f": FACILITY}
                ).scalars()
            )
            rows = conn.execute(
                text("SELECT count(*) FROM adt_events WHERE facility_id = :f"), {"f": FACILITY}
            ).scalar_one()
            inbox = conn.execute(
                text("SELECT count(*) FROM adt_inbox WHERE facility_id = :f"), {"f": FACILITY}
            ).scalar_one()
    finally:
        engine.dispose()
    return ids, int(rows), int(inbox)


def test_adt_only_epic_feed_with_mllp_faults_converges_with_nothing_lost(scenario: Scenario) -> None:
    mllp_port = free_port()
    _adt_only_epic(scenario, mllp_port)
    stack = scenario.start(workers=1, concurrency=2, beat=True)
    argv = [str(Path(sys.executable).parent / "ehr-ingest"), "mllp", "serve", "--port", str(mllp_port)]
    listener = stack.start("mllp", [*argv, "--metrics-port", "0"])
    wait_until(lambda: _accepts(mllp_port) or not listener.alive(), timeout=30, what="the MLLP listener")
    assert listener.alive(), listener.log_tail()

    started = time.monotonic()
    response = httpx.post(
        f"{scenario.sim_url}/_admin/{FACILITY}/activity", json={"changes": CHANGES, "adt": True}, timeout=60
    )
    response.raise_for_status()

    deadline = started + 90
    while True:
        state = _mllp_state(scenario)
        stored, rows, inbox = _stored(scenario)
        adt: AdtLedgerReport = check_adt_ledger(FACILITY, state["messages"], stored)
        ledger: LedgerReport = scenario.ledger(FACILITY)
        if (adt.ok and ledger.unmatched == 0) or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    converged_s = time.monotonic() - started
    tombstones = sum(1 for t in scenario.truth(FACILITY) if t["deleted"])
    stats = state["stats"]
    messages = len(state["messages"])
    print(
        f"\nADT e2e: {CHANGES} changes, {ledger.expected} resources, {messages} messages "
        f"({stats['attempted']} sends, {stats['resent']} resent, {stats['duplicated']} duplicated, "
        f"{stats['reordered']} reordered, {stats['split']} split, {stats['connection_drops']} drops, "
        f"{stats['acks_lost']} ACKs lost), {inbox} stored, {len(stored)} distinct control ids, "
        f"converged in {converged_s:.1f}s; {ledger.matched} matched, {tombstones} tombstones"
    )
    assert listener.alive(), listener.log_tail()
    assert adt.ok, (adt.pending, adt.failed[:5], adt.acked_not_stored[:5])
    assert adt.rejected == []
    assert ledger.unmatched == 0, (ledger.missing[:5], ledger.behind[:5], ledger.not_tombstoned[:5])
    assert tombstones > 0  # the run deleted Encounters, and each is a tombstone here
    assert ledger.drained
    assert ledger.expected > 0
    assert messages == CHANGES  # in ADT-only mode every change is announced (A04 A08 A01 A03 A11)
    # The faults happened, and the duplicates were stored once: one row per distinct message.
    for fault in ("duplicated", "reordered", "connection_drops", "split", "resent"):
        assert stats[fault] > 0, fault
    assert stored == {str(m["control_id"]) for m in state["messages"]}
    assert rows == inbox == len(stored) == messages

"""MLLP listener benchmark: durable ACKs per second and ACK latency at a hospital's peak rate.

The load generator (asyncio, uvloop when installed) sends ~800-byte Epic-style ADT^A08 messages
(MSH/EVN/PID/PV1 rendered by ``ehrsim.hl7``, plus NK1, PV2, AL1, DG1, IN1 and a Z-segment), each with
its own MSH-10 so that none is a duplicate, over N connections, one message in flight per connection as
interface engines send, and times each ACK. In the same run it measures a bare MLLP server (a separate
process, ``python -m bench.mllp bare PORT``) that answers ``AA`` without storing anything: the
baseline. The generator and the server under test share the machine's cores, so the bare figure is a
floor of what a bare server can do, not a ceiling. The product's listener (``ehr-ingest mllp serve``,
against a throwaway database with one facility whose ``hl7v2`` block matches the messages) is measured
when that command exists; otherwise the bench says so and writes no figure.

Figures (bench/results.json):
- mllp.acks_per_s: ``AA`` per second over 8 connections at saturation, each a stored message (the
  ``adt_events`` rows are counted afterwards); baseline: the bare server over 8 connections. The note
  gives both over 1 connection.
- mllp.p99_ms_at_500: p99 ACK latency at 500 msg/s offered over 8 connections (a fixed schedule; latency
  counted from each message's scheduled time when the generator is behind schedule, so a stall is
  not hidden); baseline: the bare server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from bench.results import Figure, write
from devstack.database import clear_redis_prefix, create_database, drop_database
from devstack.processes import Proc, Stack, free_port, wait_until
from ehrsim.hl7 import Wire, assigning_authority, render_adt

BASE_DB = os.environ.get("EHRI_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EHRI_REDIS_URL", "redis://127.0.0.1:6379/0")
DURATION_S = float(os.environ.get("BENCH_MLLP_SECONDS", "8"))
RATE = 500
CONNECTIONS = 8
FACILITY = "bench-adt"
MRN_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
WIRE = Wire(
    sending_application="EPIC",
    sending_facility="BENCHHOSP",
    receiving_application="EHR-INGEST",
    receiving_facility="EHR-INGEST",
    version="2.5.1",
    mrn_authority=assigning_authority("EPI", MRN_SYSTEM),
)
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
_MARK = "CTRLIDMARK"


# -- the baseline: a bare MLLP server ------------------------------------------------------------------


async def _serve_bare(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                buffer += chunk
                while (end := buffer.find(END_BLOCK)) >= 0:
                    message = bytes(buffer[buffer.find(START_BLOCK) + 1 : end])
                    del buffer[: end + 2]
                    control_id = message.split(b"\r", 1)[0].split(b"|")[9]
                    writer.write(
                        START_BLOCK
                        + b"MSH|^~\\&|EHR-INGEST|EHR-INGEST|EPIC|BENCHHOSP|20260101000000||ACK|"
                        + control_id
                        + b"|P|2.5.1\rMSA|AA|"
                        + control_id
                        + b"\r"
                        + END_BLOCK
                    )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# -- the load generator --------------------------------------------------------------------------------


def _template() -> list[bytes]:
    patient = {
        "resourceType": "Patient",
        "id": "eRvPZbLo8ZkD1h5t2m3",
        "identifier": [{"system": MRN_SYSTEM, "value": "  E1234567   "}],
        "name": [{"use": "official", "family": "Testpatient", "given": ["Bench"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }
    encounter = {
        "id": "enc-bench-1",
        "status": "in-progress",
        "class": {"code": "IMP"},
        "period": {"start": "2026-11-24T10:00:00Z"},
    }
    body = render_adt(
        WIRE, "A08", control_id=_MARK, at_ms=1_795_000_000_000, patient=patient, encounter=encounter
    )
    # Real A08s carry more than MSH/EVN/PID/PV1: next of kin, allergies, diagnoses, insurance, Z-segments.
    body += (
        b"NK1|1|Testpatient^Pat|SPO^Spouse^HL70063|1 Bench Street^^Springfield^IL^62701^USA|555-0101\r"
        b"PV2|||^Chest pain||||||||||||||||||||N\r"
        b"AL1|1|DA|7980^Penicillin G^RXNORM|SV|Hives\r"
        b"DG1|1||R07.9^Chest pain, unspecified^I10||20261124100000|A\r"
        b"IN1|1|BCBS-PPO^Blue Cross PPO|60054|Blue Cross Blue Shield|PO Box 1^^Chicago^IL^60601|||GRP-1234\r"
        b"ZPD|1|EPIC-BENCH|Y|N|20261124100000|site-specific fields kept raw by the listener\r"
    )
    first, *rest = body.split(_MARK.encode())
    return [START_BLOCK + first, *rest]


@dataclass
class Load:
    acks: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    mismatched: int = 0  # ACKs whose MSA-2 was not the message's MSH-10
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def aa_per_s(self) -> float:
        return self.acks["AA"] / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _connection(port: int, load: Load, prefix: str, stop_at: float, interval: float | None) -> None:
    pieces = _template()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    n = 0
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    scheduled = time.perf_counter()
    try:
        while (now := time.perf_counter()) < stop_at:
            sent_at = now
            if interval is not None:
                scheduled += interval
                if scheduled > now:
                    # On time: latency counts from the send (the timer's own overshoot is not the server's).
                    await asyncio.sleep(scheduled - now)
                    sent_at = time.perf_counter()
                else:
                    sent_at = scheduled  # behind schedule: the wait for the late ACK counts too
            n += 1
            control_id = f"{prefix}{n:07d}".encode()
            writer.write(control_id.join(pieces) + END_BLOCK)
            await writer.drain()
            while (end := buffer.find(END_BLOCK)) < 0:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("closed by the listener")
                buffer += chunk
            ack = bytes(buffer[:end])
            del buffer[: end + 2]
            msa = ack[ack.find(b"MSA|") :].split(b"\r", 1)[0].split(b"|")
            load.latencies_ms.append((time.perf_counter() - sent_at) * 1000)
            load.acks[msa[1].decode(errors="replace") if len(msa) > 1 else "none"] += 1
            if len(msa) < 3 or msa[2] != control_id:
                load.mismatched += 1
    except (ConnectionError, OSError) as exc:
        load.errors.append(type(exc).__name__)
    finally:
        writer.close()


async def _load(port: int, connections: int, seconds: float, rate: float | None) -> Load:
    load = Load()
    started = time.perf_counter()
    interval = connections / rate if rate else None
    run_id = uuid.uuid4().hex[:6]
    await asyncio.gather(
        *(
            _connection(port, load, f"{run_id}{c:02d}", started + seconds, interval)
            for c in range(connections)
        )
    )
    load.seconds = time.perf_counter() - started
    return load


def _measure(port: int, connections: int, seconds: float, rate: float | None = None) -> Load:
    try:
        import uvloop

        return uvloop.run(_load(port, connections, seconds, rate))
    except ImportError:
        return asyncio.run(_load(port, connections, seconds, rate))


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Result:
    one: Load
    eight: Load
    rated: Load


def _bench(port: int, label: str) -> Result:
    _measure(port, CONNECTIONS, 2)  # warm-up
    one = _measure(port, 1, DURATION_S)
    eight = _measure(port, CONNECTIONS, DURATION_S)
    rated = _measure(port, CONNECTIONS, DURATION_S, rate=RATE)
    for name, load in (("1 conn", one), (f"{CONNECTIONS} conns", eight), (f"{RATE}/s", rated)):
        print(
            f"  {label} {name}: {load.aa_per_s:.0f} AA/s, acks {dict(load.acks)}, p50 {load.p(0.5):.2f} ms "
            f"p99 {load.p(0.99):.2f} ms, mismatched {load.mismatched}, errors {len(load.errors)}",
            flush=True,
        )
    return Result(one, eight, rated)


# -- the product's listener --------------------------------------------------------------------------


def _ehr_ingest() -> str:
    return str(Path(sys.executable).with_name("ehr-ingest"))


def listener_available() -> bool:
    try:
        done = subprocess.run(
            [_ehr_ingest(), "mllp", "serve", "--help"], capture_output=True, timeout=60, check=False
        )
    except OSError:
        return False
    return done.returncode == 0


def _facilities_file(path: Path) -> None:
    facility = {
        "id": FACILITY,
        "vendor": "epic",
        "base_url": "https://ehr.bench/fhir",
        "mrn_system": MRN_SYSTEM,
        "auth": {"method": "private_key_jwt", "client_id": "bench", "private_key": {"env": "UNUSED"}},
        "hl7v2": {
            "sending_application": WIRE.sending_application,
            "sending_facility": WIRE.sending_facility,
            "allowed_peers": ["127.0.0.1"],
            "mrn_authority": "EPI",
        },
    }
    path.write_text(json.dumps({"facilities": [facility]}))  # JSON is YAML


def _bench_listener(workdir: Path) -> tuple[Result, int | None] | None:
    """The listener's figures and the rows it stored during the measured runs (None: not counted)."""
    name = f"ehri_bench_mllp_{uuid.uuid4().hex[:8]}"
    database_url = make_url(BASE_DB).set(database=name).render_as_string(hide_password=False)
    prefix = f"{name}:"
    env = {
        **os.environ,
        "EHRI_DATABASE_URL": database_url,
        "EHRI_REDIS_URL": REDIS_URL,
        "EHRI_REDIS_PREFIX": prefix,
        "EHRI_QUEUE": f"{prefix}ingest",
        "EHRI_LOG_FORMAT": "json",
        "EHRI_LOG_LEVEL": "WARNING",
    }
    create_database(database_url)
    engine = create_engine(database_url)
    stack = Stack(workdir, env)
    try:
        facilities = workdir / "facilities.yaml"
        _facilities_file(facilities)
        subprocess.run(
            [_ehr_ingest(), "facilities", "apply", "--no-probe", str(facilities)],
            env=env,
            check=True,
            timeout=120,
        )
        port = free_port()
        proc: Proc = stack.start(
            "listener", [_ehr_ingest(), "mllp", "serve", "--host", "127.0.0.1", "--port", str(port)]
        )
        wait_until(lambda: _accepts(port) or not proc.alive(), timeout=30, what="the MLLP listener")
        if not proc.alive():
            print(f"mllp: listener exited at start:\n{proc.log_tail()}", flush=True)
            return None
        before = _stored(engine)
        result = _bench(port, "listener")
        after = _stored(engine)
        return result, (None if before is None or after is None else after - before)
    finally:
        stack.stop()
        engine.dispose()
        clear_redis_prefix(REDIS_URL, prefix)
        drop_database(database_url)


def _stored(engine: Engine) -> int | None:
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM adt_events")).scalar_one())
    except Exception as exc:  # noqa: BLE001 - the listener's schema is not this bench's to know
        print(f"  adt_events not counted ({type(exc).__name__})", flush=True)
        return None


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-mllp-"))
    stack = Stack(workdir, dict(os.environ))
    try:
        try:
            bare = _bench_bare(stack)
        except Exception as exc:  # noqa: BLE001 - a bench that cannot measure says so, never crashes the others
            print(f"mllp: bare server bench failed ({type(exc).__name__}: {exc})", flush=True)
            return
        if not listener_available():
            print("mllp: listener not available (ehr-ingest mllp serve missing)", flush=True)
            return
        try:
            measured = _bench_listener(workdir)
        except Exception as exc:  # noqa: BLE001 - a bench that cannot measure says so, never crashes the others
            print(f"mllp: listener bench failed ({type(exc).__name__}: {exc})", flush=True)
            return
        if measured is None:
            return
        listener, rows = measured
        _write(bare, listener, rows)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _bench_bare(stack: Stack) -> Result:
    port = free_port()
    proc = stack.start("bare", [sys.executable, "-m", "bench.mllp", "bare", str(port)])
    wait_until(lambda: _accepts(port), timeout=30, what="the bare MLLP server")
    result = _bench(port, "bare")
    proc.stop()
    return result


def _write(bare: Result, listener: Result, rows: int | None) -> None:
    aa = listener.one.acks["AA"] + listener.eight.acks["AA"] + listener.rated.acks["AA"]
    durable = "rows not counted" if rows is None else f"{aa} AA, {rows} adt_events rows"
    if rows is not None and rows < aa:
        durable += " (FEWER ROWS THAN AA)"
    write(
        [
            Figure(
                "mllp.acks_per_s",
                round(listener.eight.aa_per_s, 1),
                "acks/s",
                baseline=round(bare.eight.aa_per_s, 1),
                target=">= 2000, ratio >= 0.3",
                note=(
                    f"{CONNECTIONS} connections, one message in flight each, ~800 B ADT^A08; 1 connection: "
                    f"{listener.one.aa_per_s:.0f} (bare {bare.one.aa_per_s:.0f}); {durable}"
                ),
            ),
            Figure(
                "mllp.p99_ms_at_500",
                round(listener.rated.p(0.99), 2),
                "ms",
                baseline=round(bare.rated.p(0.99), 2),
                target="<= 25",
                note=(
                    f"{RATE} msg/s scheduled over {CONNECTIONS} connections, latency from the scheduled "
                    f"send; achieved {listener.rated.aa_per_s:.0f} AA/s; p50 {listener.rated.p(0.5):.2f} ms"
                ),
            ),
        ]
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["bare"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_bare(int(sys.argv[2])))
    else:
        main()

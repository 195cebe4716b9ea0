"""A database of their own for the listener tests (the listener commits in its own connections, so the
rolled-back ``db`` session cannot see its rows), with facilities that send HL7 v2, and a listener running
on a real TCP socket in a background event loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.cli.mllp import make_url_conninfo
from app.db.models import Facility
from app.hl7v2.inbox import AdtWriter
from app.hl7v2.listener import Listener, ListenerConfig
from app.hl7v2.mllp import END, frame
from app.hl7v2.routing import load_directory
from app.hl7v2.service import parse_fields
from tests.conftest import engine_for, make_facility, migrated_database

HL7V2 = {
    "sending_application": "EPIC",
    "sending_facility": "GENHOSP",
    "allowed_peers": ["127.0.0.1"],
    "mrn_authority": "GENHOSP",
}


@pytest.fixture(scope="package")
def mllp_database(run_id: str) -> Iterator[str]:
    with migrated_database(f"{run_id}_mllp") as url:
        with engine_for(url) as engine, Session(engine) as session:
            facility = make_facility(session, "adt-fac")
            facility.hl7v2 = HL7V2
            facility.mrn_system = "urn:oid:1.2.3.4"
            other = make_facility(session, "adt-remote")  # only from an address the tests never use
            other.hl7v2 = {**HL7V2, "sending_application": "ORACLE", "allowed_peers": ["192.0.2.0/24"]}
            other.mrn_system = "urn:oid:1.2.3.5"
            session.commit()
        yield url


@pytest.fixture(scope="package")
def mllp_engine(mllp_database: str) -> Iterator[Engine]:
    with engine_for(mllp_database) as engine:
        yield engine


@pytest.fixture
def clean(mllp_engine: Engine) -> Engine:
    with mllp_engine.begin() as conn:
        conn.execute(text("TRUNCATE adt_inbox, adt_quarantine"))
    return mllp_engine


@dataclass
class Running:
    port: int
    listener: Listener
    loop: asyncio.AbstractEventLoop
    rings: list[str]

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)


def start_listener(
    conninfo: str,
    engine: Engine,
    *,
    max_bytes: int = 1_048_576,
    idle_s: float = 30,
    loops: int = 1,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Running]:
    """A listener on a free port in a background loop (one writer connection unless ``loops``: a
    killed connection is then the one the next message uses)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rings: list[str] = []

    def directory() -> Any:
        with Session(engine) as session:
            return load_directory(session)

    listener = Listener(
        AdtWriter(conninfo, slots=loops),
        directory,
        ListenerConfig(max_message_bytes=max_bytes, idle_timeout_s=idle_s, doorbell_interval_s=0.01),
        ring=rings.append,
    )
    port = asyncio.run_coroutine_threadsafe(listener.start("127.0.0.1", 0, tls=tls), loop).result(timeout=30)
    running = Running(port, listener, loop, rings)
    try:
        yield running
    finally:
        running.call(listener.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def listener(mllp_database: str, clean: Engine) -> Iterator[Running]:
    conninfo = make_url_conninfo(mllp_database) + "?application_name=ehri_mllp_test"
    yield from start_listener(conninfo, clean, max_bytes=8192, idle_s=2)


class Client:
    """A sender keeping one message in flight, as interface engines do."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._buffer = b""

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(frame(message))
        return self.read_ack()

    def read_ack(self) -> bytes:
        while END not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before an ACK")
            self._buffer += data
        ack, _, self._buffer = self._buffer.partition(END)
        self._buffer = self._buffer.removeprefix(b"\r")
        return ack.removeprefix(b"\x0b")

    def close(self) -> None:
        self.sock.close()


def parse_committed(engine: Engine, facility_id: str = "adt-fac") -> int:
    """What the worker does before it claims: parse the PID/PV1/MRG fields of the committed rows."""
    with Session(engine) as session, session.begin():
        facility = session.get(Facility, facility_id)
        assert facility is not None
        return parse_fields(session, facility)


def msa(ack: bytes) -> list[str]:
    segment = next(s for s in ack.decode().split("\r") if s.startswith("MSA"))
    return segment.split(segment[3])[1:]

"""The ADT writer after stop: a write is refused at once (the listener answers AE, never AA, and never
hangs the sender's connection), and nothing is stored."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine, text

from app.cli.mllp import make_url_conninfo
from app.hl7v2.inbox import AdtRow, AdtWriter
from app.ingest.group_commit import WriterStopped
from tests.app.hl7v2.conftest import Client, start_listener
from tests.app.hl7v2.samples import a01


def _row(control_id: str) -> AdtRow:
    return AdtRow(
        facility_id="adt-fac",
        control_id=control_id,
        raw="MSH|^~\\&|EPIC|GENHOSP",
        version="2.5.1",
        message_type="ADT",
        event_type="A08",
        message_time=None,
        mrn=None,
        prior_mrn=None,
        visit_number=None,
        patient_class=None,
        location=None,
        admit_time=None,
        discharge_time=None,
        work=False,
    )


def _stored(engine: Engine, control_id: str) -> int:
    with engine.connect() as conn:
        query = text("SELECT count(*) FROM adt_inbox WHERE control_id = :c")
        return int(conn.execute(query, {"c": control_id}).scalar_one())


def test_a_write_after_stop_is_refused_at_once_and_stores_nothing(mllp_database: str, clean: Engine) -> None:
    async def scenario() -> None:
        writer = AdtWriter(make_url_conninfo(mllp_database))
        await writer.start()
        assert await writer.write(_row("before-stop")) is True
        await writer.stop()
        with pytest.raises(WriterStopped):
            await asyncio.wait_for(writer.write(_row("after-stop")), timeout=5)

    asyncio.run(scenario())
    assert _stored(clean, "before-stop") == 1
    assert _stored(clean, "after-stop") == 0


def test_the_listener_answers_ae_when_its_writer_has_stopped(mllp_database: str, clean: Engine) -> None:
    conninfo = make_url_conninfo(mllp_database)
    for running in start_listener(conninfo, clean, idle_s=10):
        running.call(running.listener._writer.stop())  # the writer as a shutdown leaves it
        client = Client(running.port)
        try:
            ack = client.send(a01("late-1"))
        finally:
            client.close()
        assert b"MSA|AE|late-1" in ack
        assert b"shutting_down" in ack
    assert _stored(clean, "late-1") == 0

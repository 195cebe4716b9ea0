"""The MLLP listener: one asyncio server for every facility's HL7 v2 ADT feed.

Per connection: the peer must be allowed by some facility (else closed before reading); frames are read
in order, each answered before the next is read (senders keep one message in flight), so ACKs go back in
order. Per message: read MSH (``read_header``: the rest of the message is parsed by the worker, off the
ACK path), route to a facility (MSH-3/MSH-4 and the peer), commit it to
``adt_inbox`` (group commit with other connections' messages), then ``AA``; a refused message is kept in
``adt_quarantine`` and answered ``AR`` with its reason; when Postgres cannot take it, ``AE`` (never
``AA``), so the sender resends. After commits the doorbell rings (coalesced, off the event loop): the
worker parses the message's patient and visit fields and resolves the patient. Nothing from PID or
PV1 is logged: ids, reasons, counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import structlog
from prometheus_client import Histogram

from app.errors import MessageRejected
from app.facilities.schemas import ADT_EVENTS
from app.hl7v2.ack import AckCode, build_ack, recover_control_id
from app.hl7v2.inbox import AdtRow, AdtWriter
from app.hl7v2.message import Header, read_header
from app.hl7v2.mllp import Frame, FrameDecoder, Oversized, frame
from app.hl7v2.routing import Directory, Hl7Facility
from app.ingest.group_commit import WriterStopped
from app.metrics import MLLP_ACK_SECONDS, MLLP_CONNECTIONS, MLLP_REFUSED_PEERS, mllp_messages
from app.pacing import Pacer

log = structlog.get_logger("hl7v2.listener")

READ_BYTES = 65536


@functools.cache
def _ack_seconds(code: AckCode) -> Histogram:
    return MLLP_ACK_SECONDS.labels(code)


@dataclass(frozen=True)
class ListenerConfig:
    max_message_bytes: int
    idle_timeout_s: float
    directory_refresh_s: float = 30.0
    doorbell_interval_s: float = 0.2


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class Listener:
    def __init__(
        self,
        writer: AdtWriter,
        load_directory: Callable[[], Directory],
        config: ListenerConfig,
        *,
        ring: Callable[[str], object] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._writer = writer
        self._load_directory = load_directory
        self._config = config
        self._now = now
        self._pacer = (
            Pacer(ring, config.doorbell_interval_s, name="adt-doorbell") if ring is not None else None
        )
        self.directory = Directory([])
        self._server: asyncio.Server | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> int:
        """Listen; returns the bound port (``port=0`` picks a free one)."""
        self.directory = await asyncio.to_thread(self._load_directory)
        await self._writer.start()
        if self._pacer is not None:
            self._pacer.start()
        self._refresh = asyncio.create_task(self._refresh_directory(), name="adt-directory")
        self._server = await asyncio.start_server(self._serve, host, port, ssl=tls, limit=READ_BYTES)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "hl7v2.listening", port=bound, facilities=len(self.directory.facilities), tls=tls is not None
        )
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        if self._pacer is not None:
            await self._pacer.stop()
        await self._writer.stop()

    async def _refresh_directory(self) -> None:
        while True:
            await asyncio.sleep(self._config.directory_refresh_s)
            try:
                self.directory = await asyncio.to_thread(self._load_directory)
            except Exception as exc:  # noqa: BLE001 - keep serving with the directory we have
                log.warning("hl7v2.directory_refresh_failed", error=type(exc).__name__)

    # -- a connection ---------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else ""
        try:
            if not self.directory.peer_allowed(peer):
                MLLP_REFUSED_PEERS.inc()
                log.warning("hl7v2.peer_refused", peer=peer)  # an engine's address, no patient data
                return
            MLLP_CONNECTIONS.inc()
            try:
                await self._converse(reader, writer, peer)
            finally:
                MLLP_CONNECTIONS.dec()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The listener is stopping: end this connection quietly (asyncio's stream callback reports
            # a cancelled connection task as an error). Nothing is lost: an un-ACKed message is resent.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        decoder = FrameDecoder(self._config.max_message_bytes)
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for makes a task of every read.
                async with asyncio.timeout(self._config.idle_timeout_s):
                    data = await reader.read(READ_BYTES)
            except TimeoutError:
                log.info("hl7v2.idle_closed")
                return
            if not data:
                if decoder.mid_frame:
                    log.info("hl7v2.connection_cut_mid_message")
                return
            for event in decoder.feed(data):
                started = time.perf_counter()
                ack, code = await self.handle(event, peer)
                writer.write(frame(ack))
                await writer.drain()
                _ack_seconds(code).observe(time.perf_counter() - started)

    # -- a message ------------------------------------------------------------------------------------

    async def handle(self, event: Frame | Oversized, peer: str) -> tuple[bytes, AckCode]:
        """The ACK for one frame, after whatever it needs is committed."""
        raw = event.data if isinstance(event, Frame) else event.head
        header: Header | None = None
        facility: Hl7Facility | None = None
        try:
            header, text = read_header(raw)
            facility = self._route_oversized(header, peer) if isinstance(event, Oversized) else None
            if isinstance(event, Oversized):
                raise MessageRejected("message_too_large", f"{event.size} bytes")
            facility = self.directory.route(header, peer)
            if header.message_type != "ADT":
                raise MessageRejected("unsupported_message_type", "only ADT messages are taken")
        except MessageRejected as exc:
            if isinstance(event, Oversized) and exc.reason == "unparseable_msh":
                exc = MessageRejected("message_too_large", f"{event.size} bytes")
            return await self._reject(exc, raw, header, facility, peer)
        return await self._accept(text, facility, header)

    def _route_oversized(self, header: Header, peer: str) -> Hl7Facility | None:
        """The facility of a message refused for its size, when its head names one (for quarantine)."""
        try:
            return self.directory.route(header, peer)
        except MessageRejected:
            return None

    async def _accept(self, text: str, facility: Hl7Facility, header: Header) -> tuple[bytes, AckCode]:
        row = _row(text, facility, header)
        event = header.event_type if header.event_type in ADT_EVENTS else "other"
        try:
            stored = await self._writer.write(row)
        except (psycopg.Error, OSError, WriterStopped) as exc:
            why = "shutting_down" if isinstance(exc, WriterStopped) else "database_unavailable"
            mllp_messages(facility.id, event, why).inc()
            log.warning("hl7v2.not_stored", facility_id=facility.id, reason=why, error=type(exc).__name__)
            return build_ack(header, "AE", now=self._now(), reason=why), "AE"
        mllp_messages(facility.id, event, "stored" if stored else "duplicate").inc()
        if stored and self._pacer is not None:  # every new row: the worker parses it, work or not
            self._pacer.ring(facility.id)
        return build_ack(header, "AA", now=self._now()), "AA"

    async def _reject(
        self,
        exc: MessageRejected,
        raw: bytes,
        header: Header | None,
        facility: Hl7Facility | None,
        peer: str,
    ) -> tuple[bytes, AckCode]:
        event = header.event_type if header and header.event_type in ADT_EVENTS else "other"
        label = facility.id if facility else "-"
        try:
            await self._writer.quarantine(
                facility_id=facility.id if facility else None,
                peer=peer,
                reason=exc.reason,
                detail=str(exc),
                raw=raw,
            )
        except (psycopg.Error, OSError) as error:
            # Not kept: the sender must send it again rather than drop it on our AR.
            mllp_messages(label, event, "database_unavailable").inc()
            log.warning("hl7v2.not_quarantined", reason=exc.reason, error=type(error).__name__)
            return build_ack(
                header,
                "AE",
                now=self._now(),
                reason="database_unavailable",
                control_id=recover_control_id(raw),
            ), "AE"
        mllp_messages(label, event, exc.reason).inc()
        log.info("hl7v2.rejected", facility_id=label, reason=exc.reason)
        ack = build_ack(header, "AR", now=self._now(), reason=exc.reason, control_id=recover_control_id(raw))
        return ack, "AR"


def _row(text: str, facility: Hl7Facility, header: Header) -> AdtRow:
    return AdtRow(
        facility_id=facility.id,
        control_id=header.control_id,
        raw=text,
        version=header.version or None,
        message_type=header.message_type or None,
        event_type=header.event_type or None,
        message_time=header.message_time,
        work=header.event_type in ADT_EVENTS,
    )

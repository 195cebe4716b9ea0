"""The MLLP sender of one facility: its HL7 v2 ADT feed, sent the way interface engines send.

Every Patient and Encounter change becomes one message (``ehrsim.hl7``) with its own MSH-10, queued in
the order of the changes. One connection, one message in flight: the sender writes the frame
(``0x0B`` message ``0x1C 0x0D``) and waits up to ``ack_timeout_s`` for the ACK whose MSA-2 is that
MSH-10 (other ACKs are ignored). ``AA`` (or ``CA``): delivered. ``AE``/``CE``: resent after a backoff.
``AR``/``CR``: rejected, recorded, not resent. No ACK in time: resent at once. A connection that cannot
be opened or that breaks keeps the queue: the sender reconnects with a doubling backoff and resends the
message that was in flight. A message sent ``max_attempts`` times without an ``AA`` is given up and
recorded (``failed``).

Ground truth: ``messages`` lists every message in the order of its change, with its status (``pending``,
``acked``, ``rejected``, ``failed``), attempts and last ACK code (``GET /_admin/{facility}/mllp``).
Faults (``ehrsim.faults.MllpFaults``): a connection dropped halfway through a frame, an ACK lost (the
sender resends after the timeout), duplicates after an ``AA``, out-of-order delivery, a frame split
across TCP segments, and the link down (messages queue until it is cleared).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import structlog

from ehrsim.config import MllpConfig
from ehrsim.faults import Faults
from ehrsim.hl7 import Wire, render_adt
from ehrsim.store import Change

log = structlog.get_logger("ehrsim.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
SPLIT_PAUSE_S = 0.005  # between the segments of a split frame, so that they leave as separate packets
Status = Literal["pending", "acked", "rejected", "failed"]
Outcome = Literal["acked", "error", "rejected", "timeout", "dropped"]
_CODES: dict[str, Outcome] = {
    "AA": "acked",
    "CA": "acked",
    "AE": "error",
    "CE": "error",
    "AR": "rejected",
    "CR": "rejected",
}


@dataclass(slots=True)
class AdtMessage:
    seq: int  # position in the feed: the order of the changes
    control_id: str  # MSH-10, the same on every resend and duplicate
    event: str
    resource_type: str
    resource_id: str
    version: int
    body: bytes  # the message, segments ending in \r (unframed)
    status: Status = "pending"
    attempts: int = 0
    ack_code: str | None = None  # MSA-1 of the last ACK for it
    reason: str | None = None  # why it was rejected or given up

    def frame(self) -> bytes:
        return START_BLOCK + self.body + END_BLOCK

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "control_id": self.control_id,
            "event": self.event,
            "resourceType": self.resource_type,
            "id": self.resource_id,
            "version": self.version,
            "status": self.status,
            "attempts": self.attempts,
            "ack_code": self.ack_code,
            "reason": self.reason,
        }


@dataclass(slots=True)
class MllpStats:
    queued: int = 0
    attempted: int = 0  # frames (or parts of frames) written for messages, duplicates excluded
    acked: int = 0
    rejected: int = 0
    failed: int = 0
    resent: int = 0  # attempts after the first
    duplicated: int = 0
    reordered: int = 0
    split: int = 0
    connections: int = 0  # connections opened
    connect_failures: int = 0
    connection_drops: int = 0  # closed mid-frame by the fault
    connections_lost: int = 0  # closed by the peer (or broken) while a message was in flight
    ack_timeouts: int = 0
    acks_lost: int = 0  # ACKs ignored by the fault

    @property
    def pending(self) -> int:
        return self.queued - self.acked - self.rejected - self.failed

    def as_dict(self) -> dict[str, int]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "pending": self.pending}


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3


def parse_ack(frame: bytes) -> Ack | None:
    """MSA-1..3 of an ACK message, or ``None`` when it has no MSA segment."""
    text = frame.decode("utf-8", errors="replace")
    separator = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    for segment in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if segment.startswith("MSA"):
            fields = [*segment.split(separator), "", "", ""]
            return Ack(fields[1].strip(), fields[2].strip(), fields[3].strip()[:200])
    return None


class _Connection:
    """One TCP connection to the listener and the bytes read from it that are not yet a whole frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    async def read_frame(self) -> bytes:
        """The next whole frame's content; raises ``ConnectionError`` at end of stream."""
        while True:
            start = self.buffer.find(START_BLOCK)
            if start >= 0:
                end = self.buffer.find(END_BLOCK, start + 1)
                if end >= 0:
                    frame = bytes(self.buffer[start + 1 : end])
                    del self.buffer[: end + len(END_BLOCK)]
                    return frame
            elif self.buffer:
                self.buffer.clear()  # bytes outside any frame
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("closed by the listener")
            self.buffer += chunk

    def close(self) -> None:
        self.writer.close()


class MllpSender:
    def __init__(
        self,
        facility_id: str,
        config: MllpConfig,
        wire: Wire,
        faults: Faults,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.facility_id = facility_id
        self.config = config
        self.wire = wire
        self.faults = faults
        self.stats = MllpStats()
        self.messages: list[AdtMessage] = []
        self._sleep = sleep
        self._queue: deque[AdtMessage] = deque()
        self._wake: asyncio.Event | None = None
        self._connection: _Connection | None = None
        # Control ids stay unique across restarts of the simulator: the listener deduplicates on them.
        self._id_prefix = str(int(time.time()))

    def enqueue(
        self,
        change: Change,
        event: str,
        patient: dict[str, Any],
        encounter: dict[str, Any] | None = None,
    ) -> AdtMessage:
        """Render and queue the message announcing ``change``. Call from the event loop thread."""
        seq = len(self.messages) + 1
        control_id = f"{self._id_prefix}{seq:06d}"
        body = render_adt(
            self.wire,
            event,
            control_id=control_id,
            at_ms=change.last_updated,
            patient=patient,
            encounter=encounter,
        )
        message = AdtMessage(seq, control_id, event, change.resource_type, change.id, change.version, body)
        self.messages.append(message)
        self.stats.queued += 1
        self._queue.append(message)
        self.faults_changed()
        return message

    def faults_changed(self) -> None:
        """Wake the loop: new work, or the link came back."""
        if self._wake is not None:
            self._wake.set()

    @property
    def connected(self) -> bool:
        """Whether a connection is open and the listener has not closed its end."""
        return self._connection is not None and not self._connection.reader.at_eof()

    def state(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "stats": self.stats.as_dict(),
            "messages": [m.as_dict() for m in self.messages],
        }

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send until cancelled."""
        self._wake = asyncio.Event()
        backoff = self.config.backoff_initial_s
        log.info("ehrsim.mllp.started", facility_id=self.facility_id)
        try:
            while True:
                await self._wait_for_work()
                if self._connection is not None and not self.connected:
                    self._disconnect()  # the listener closed it while idle (its idle timeout): not a failure
                if self._connection is None:
                    self._connection = await self._connect()
                    if self._connection is None:
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, self.config.backoff_max_s)
                        continue
                message = self._next()
                outcome = await self._exchange(self._connection, message)
                if outcome == "dropped":
                    # Reconnect after a pause that doubles while the link keeps breaking.
                    self._disconnect()
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.config.backoff_max_s)
                elif outcome == "acked":
                    backoff = self.config.backoff_initial_s
                await self._settle(message, outcome)
        finally:
            self._wake = None
            self._disconnect()

    async def _wait_for_work(self) -> None:
        """Until there is a message to send and the link is up (closed while it is down)."""
        assert self._wake is not None  # set by run()
        while not self._queue or self.faults.config.mllp.link_down:
            if self.faults.config.mllp.link_down:
                self._disconnect()
            self._wake.clear()
            await self._wake.wait()

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connect(self) -> _Connection | None:
        try:
            async with asyncio.timeout(self.config.ack_timeout_s):
                reader, writer = await asyncio.open_connection(self.config.host, self.config.port)
        except (OSError, TimeoutError) as exc:
            self.stats.connect_failures += 1
            log.info("ehrsim.mllp.connect_failed", facility_id=self.facility_id, error=type(exc).__name__)
            return None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections += 1
        return _Connection(reader, writer)

    def _next(self) -> AdtMessage:
        """The message to send now: the oldest, or (reorder fault) the one after it."""
        mllp = self.faults.config.mllp
        if len(self._queue) >= 2 and self.faults.chance(mllp.reorder_rate):
            self.faults.count("mllp_reorder")
            self.stats.reordered += 1
            message = self._queue[1]
            del self._queue[1]
            return message
        return self._queue.popleft()

    async def _exchange(self, connection: _Connection, message: AdtMessage) -> Outcome:
        """Send the message once and wait for its ACK."""
        message.attempts += 1
        self.stats.attempted += 1
        if message.attempts > 1:
            self.stats.resent += 1
        mllp = self.faults.config.mllp
        frame = message.frame()
        try:
            if self.faults.chance(mllp.drop_connection_rate):
                self.faults.count("mllp_drop_connection")
                self.stats.connection_drops += 1
                connection.writer.write(frame[: len(frame) // 2])
                await connection.writer.drain()
                return "dropped"
            await self._write(connection, frame, split=self.faults.chance(mllp.split_rate))
            ack = await self._await_ack(connection, message, lose=self.faults.chance(mllp.ack_lost_rate))
        except (ConnectionError, OSError):
            self.stats.connections_lost += 1
            return "dropped"
        if ack is None:
            return "timeout"
        message.ack_code = ack.code
        outcome = _CODES.get(ack.code.upper(), "error")
        message.reason = None if outcome == "acked" else (f"{ack.code}: {ack.text}" if ack.text else ack.code)
        return outcome

    async def _write(self, connection: _Connection, frame: bytes, *, split: bool) -> None:
        if not split:
            connection.writer.write(frame)
            await connection.writer.drain()
            return
        self.faults.count("mllp_split")
        self.stats.split += 1
        # Three packets: the start block and half the message, the rest with 0x1C, then the final 0x0D.
        middle = len(frame) // 2
        for part in (frame[:middle], frame[middle:-1], frame[-1:]):
            connection.writer.write(part)
            await connection.writer.drain()
            await self._sleep(SPLIT_PAUSE_S)

    async def _await_ack(self, connection: _Connection, message: AdtMessage, *, lose: bool) -> Ack | None:
        """The ACK of ``message``, or ``None`` when none came in time (``lose``: ignore it if it does)."""
        try:
            async with asyncio.timeout(self.config.ack_timeout_s):
                while True:
                    ack = parse_ack(await connection.read_frame())
                    if ack is None or ack.control_id != message.control_id:
                        continue  # not the answer to this message (a late ACK of a resend, a duplicate)
                    if lose:
                        self.faults.count("mllp_ack_lost")
                        self.stats.acks_lost += 1
                        continue  # wait out the timeout as if it never came
                    return ack
        except TimeoutError:
            self.stats.ack_timeouts += 1
            return None

    async def _settle(self, message: AdtMessage, outcome: Outcome) -> None:
        if outcome == "acked":
            message.status = "acked"
            self.stats.acked += 1
            connection = self._connection
            if connection is not None and self.faults.chance(self.faults.config.mllp.duplicate_rate):
                await self._duplicate(connection, message)
            return
        if outcome == "rejected":
            message.status = "rejected"
            self.stats.rejected += 1
            log.warning("ehrsim.mllp.rejected", facility_id=self.facility_id, seq=message.seq)
            return
        if message.attempts >= self.config.max_attempts:
            message.status = "failed"
            message.reason = f"{outcome} after {message.attempts} attempts"
            self.stats.failed += 1
            log.warning("ehrsim.mllp.gave_up", facility_id=self.facility_id, seq=message.seq, reason=outcome)
            return
        self._queue.appendleft(message)  # resent before anything queued after it
        if outcome == "error":
            await self._sleep(self.config.backoff_initial_s)

    async def _duplicate(self, connection: _Connection, message: AdtMessage) -> None:
        """Send an acknowledged message again, as an engine does after a failover; wait for its ACK."""
        self.faults.count("mllp_duplicate")
        self.stats.duplicated += 1
        with contextlib.suppress(ConnectionError, OSError):
            await self._write(connection, message.frame(), split=False)
            await self._await_ack(connection, message, lose=False)

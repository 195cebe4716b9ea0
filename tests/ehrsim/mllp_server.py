"""A minimal MLLP ACK server for the sender's tests (asyncio, in the test's event loop).

It records what a listener would see: every frame with the connection it came on and the number of
reads it took, connections that closed with a partial frame, and answers each message with an ACK built
by python-hl7 (``respond`` decides the code, or no answer at all). Not the product's listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import hl7

START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"


@dataclass(frozen=True)
class Received:
    control_id: str
    message: hl7.Message
    connection: int  # 1, 2, ... in the order connections were accepted
    reads: int  # socket reads that delivered a part of this frame


def always_aa(control_id: str, seen: int) -> str | None:
    """The default answer: ``AA`` (``seen``: how many times this control id arrived, this one included)."""
    return "AA"


@dataclass
class AckServer:
    respond: Callable[[str, int], str | None] = always_aa
    idle_timeout_s: float | None = None  # close a connection that sent nothing for this long
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections that ended
    partial_frames: int = 0  # connections that ended in the middle of a frame
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        """Listen (again) on ``port``, or on a free port the first time."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection (the listener is down)."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    def control_ids(self) -> list[str]:
        return [r.control_id for r in self.received]

    def seen(self, control_id: str) -> int:
        return sum(1 for r in self.received if r.control_id == control_id)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.add(writer)
        buffer = bytearray()
        reads = 0
        try:
            while chunk := await self._read(reader):
                buffer += chunk
                reads += 1
                while (end := buffer.find(END_BLOCK)) >= 0:
                    frame = bytes(buffer[buffer.find(START_BLOCK) + 1 : end])
                    del buffer[: end + len(END_BLOCK)]
                    await self._answer(writer, frame, number, reads)
                    reads = 1 if buffer else 0
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            self.closed += 1
            if buffer:
                self.partial_frames += 1
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                return await reader.read(65536)
        except TimeoutError:
            return b""  # idle: close it

    async def _answer(self, writer: asyncio.StreamWriter, frame: bytes, connection: int, reads: int) -> None:
        message = hl7.parse(frame.decode())
        control_id = str(message.segment("MSH")[10])
        self.received.append(Received(control_id, message, connection, reads))
        code = self.respond(control_id, self.seen(control_id))
        if code is None:
            return
        ack = message.create_ack(ack_code=code, application="ACKSRV", facility="TEST")
        writer.write(START_BLOCK + str(ack).encode() + END_BLOCK)
        await writer.drain()

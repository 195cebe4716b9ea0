"""MLLP framing: ``<VT> message <FS><CR>`` (``0x0B`` … ``0x1C 0x0D``), incremental and pure.

``FrameDecoder.feed`` takes whatever TCP delivered (a frame split over many reads, many frames in one)
and returns the events it completes: a ``Frame`` (the message bytes between the delimiters) or an
``Oversized`` (a message longer than the bound: its bytes are discarded as they arrive, so memory stays
bounded, and the caller answers ``AR``). Bytes outside a frame (line noise, a keep-alive newline) are
skipped. A sender that ends a frame with ``<FS>`` alone (no trailing ``<CR>``) is tolerated: the next
``<VT>`` starts the next frame.
"""

from __future__ import annotations

from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c"
CR = b"\x0d"
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576


def frame(message: bytes) -> bytes:
    """``message`` in its MLLP envelope."""
    return START + message + END + CR


@dataclass(frozen=True)
class Frame:
    data: bytes


@dataclass(frozen=True)
class Oversized:
    """A message above the bound; ``head`` is its first bytes (enough for the MSH, to answer ``AR``)."""

    head: bytes
    size: int


Event = Frame | Oversized

_HEAD_BYTES = 4096


class FrameDecoder:
    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._oversized = False
        self._size = 0

    @property
    def mid_frame(self) -> bool:
        """A frame has started and not ended (a connection closing now cut a message)."""
        return self._in_frame

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = data.find(START, pos)
                if start < 0:
                    return events  # noise between frames (a CR after FS, keep-alives)
                self._in_frame, self._oversized, self._size = True, False, 0
                self._buffer.clear()
                pos = start + 1
                continue
            end = data.find(END, pos)
            chunk = data[pos:] if end < 0 else data[pos:end]
            self._take(chunk)
            if end < 0:
                return events
            events.append(self._finish())
            pos = end + 1
        return events

    def _take(self, chunk: bytes) -> None:
        # A new START inside a frame means the previous one was cut (a sender reconnect mid-write
        # is on another connection; on this one it is garbage): keep the newest frame.
        restart = chunk.rfind(START)
        if restart >= 0:
            self._buffer.clear()
            self._oversized, self._size = False, 0
            chunk = chunk[restart + 1 :]
        self._size += len(chunk)
        if self._oversized:
            return
        if self._size > self.max_message_bytes:
            self._oversized = True
            self._buffer.extend(chunk[: max(0, _HEAD_BYTES - len(self._buffer))])
            del self._buffer[_HEAD_BYTES:]
            return
        self._buffer.extend(chunk)

    def _finish(self) -> Event:
        self._in_frame = False
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._oversized:
            return Oversized(head=data, size=self._size)
        return Frame(data)

"""A local HTTP server standing in for PagerDuty, Slack or a webhook receiver, over real HTTP.

It records every request (path, headers, raw body) and answers from a script: ``fail(n, status)`` makes
the next ``n`` requests answer ``status``; otherwise it answers what the real service answers to success
(PagerDuty 202 with its JSON, Slack 200 ``ok``, a webhook 204).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Flavour = Literal["pagerduty", "slack", "webhook"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeSink:
    flavour: Flavour
    url: str = ""
    received: list[Received] = field(default_factory=list)  # every request, refused ones included
    _failures: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, times: int, status: int = 500) -> None:
        with self._lock:
            self._failures.extend([status] * times)

    def accepted(self) -> list[Received]:
        """The requests answered with success, in arrival order."""
        return [r for r in self.received if r.headers.get("x-fake-status", "").startswith("2")]

    def _answer(self) -> tuple[int, bytes, str]:
        with self._lock:
            if self._failures:
                return self._failures.pop(0), b'{"status":"error"}', "application/json"
        if self.flavour == "pagerduty":
            return 202, b'{"status":"success","message":"Event processed"}', "application/json"
        if self.flavour == "slack":
            return 200, b"ok", "text/plain"
        return 204, b"", "text/plain"


@contextmanager
def fake_sink(flavour: Flavour) -> Iterator[FakeSink]:
    sink = FakeSink(flavour)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status, answer, content_type = sink._answer()
            headers = {k.lower(): v for k, v in self.headers.items()}
            headers["x-fake-status"] = str(status)
            sink.received.append(Received(self.path, headers, body))
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

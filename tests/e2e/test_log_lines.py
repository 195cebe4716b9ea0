"""What the real processes write: with ``EHRI_LOG_FORMAT=json`` (the scenario's setting, as in the
Docker image) every line the receiver, the celery worker (parent and pool children) and beat print on
stdout or stderr is one JSON object whose ``level`` is the level it was logged at."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.queue import enqueue_drain, make_celery
from app.settings import Settings
from devstack.processes import Proc, Stack, free_port, http_ok, wait_until
from devstack.scenario import Scenario

pytestmark = pytest.mark.e2e


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


def _records(proc: Proc) -> list[dict[str, Any]]:
    records = []
    for line in _lines(proc.log_path):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{proc.name} printed a line that is not JSON: {line!r}")
        assert isinstance(record, dict), f"{proc.name}: {line!r}"
        records.append(record)
    return records


def _logged(proc: Proc, text: str) -> bool:
    return any(text in line for line in _lines(proc.log_path))


def test_every_line_of_every_process_is_a_json_object_with_its_true_level(scenario: Scenario) -> None:
    stack = scenario.start(workers=1, concurrency=2, beat=True)
    receiver, worker, beat = (
        next(p for p in stack.procs if p.name == n) for n in ("receiver", "worker0", "beat")
    )
    scenario.make_changes("fac-e2e", 20)
    assert scenario.wait_for_ledger("fac-e2e", timeout=60).ok
    # A warning from our code in the receiver, and one in a pool child of the worker.
    refused = httpx.post(
        f"{scenario.receiver_url}/hooks/fac-e2e", headers={"Authorization": "Bearer wrong"}, content=b"{}"
    )
    assert refused.status_code == 401
    env = scenario.env()
    settings = Settings(
        redis_url=env["EHRI_REDIS_URL"], redis_prefix=env["EHRI_REDIS_PREFIX"], queue=env["EHRI_QUEUE"]
    )
    celery = make_celery(settings)
    try:
        enqueue_drain(celery, settings.queue, "fac-nobody-registered")
    finally:
        celery.close()
    wait_until(lambda: _logged(worker, "ingest.drain.unknown_facility"), timeout=30, what="the drain warning")
    stack.stop()  # shutdown lines count too

    by_process = {proc.name: _records(proc) for proc in (receiver, worker, beat)}

    def levels(name: str, event: str) -> set[str]:
        return {r.get("level", "") for r in by_process[name] if r.get("event") == event}

    assert levels("receiver", "hooks.unauthenticated") == {"warning"}
    assert levels("worker0", "ingest.drain.unknown_facility") == {"warning"}
    (unknown,) = (r for r in by_process["worker0"] if r.get("event") == "ingest.drain.unknown_facility")
    assert unknown["process"].startswith("ForkPoolWorker-")  # logged by a pool child, at its own level
    assert levels("worker0", "ehr.token.issued") == {"info"}
    assert levels("worker0", "ingest.drained") == {"info"}
    assert by_process["beat"], "beat logged nothing"
    for name, records in by_process.items():
        for record in records:
            assert record.get("level") in {"debug", "info", "warning", "error", "critical"}, (name, record)
            assert "ForkPoolWorker" not in str(record.get("event")), (name, record)


def test_the_production_receiver_command_logs_json_lines_only(scenario: Scenario) -> None:
    """``ehr-ingest serve`` (the image's command) runs uvicorn without uvicorn's own log handlers."""
    stack = Stack(scenario.workdir, scenario.env())
    scenario.stack = stack  # torn down with the scenario
    port = free_port()
    serve = stack.start(
        "serve", [str(Path(sys.executable).parent / "ehr-ingest"), "serve", "--port", str(port)]
    )
    wait_until(http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=30, what="ehr-ingest serve")
    refused = httpx.post(
        f"http://127.0.0.1:{port}/hooks/fac-e2e", headers={"Authorization": "Bearer x"}, content=b"{}"
    )
    assert refused.status_code == 401
    stack.stop()

    assert [(r["event"], r["level"]) for r in _records(serve)] == [("hooks.unauthenticated", "warning")]

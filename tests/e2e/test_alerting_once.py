"""Each alert is sent once, however many processes evaluate it: two beat processes each schedule
``alerts.evaluate`` every second, three worker nodes (two processes each) consume the alerts queue, and the
EHR of two facilities fails every read until their rows are dead letters (``dead_letters`` and
``error_rate`` at both). The EHR recovers, the dead letters are replayed with the CLI, and every alert
resolves. PagerDuty, Slack and a Standard Webhooks receiver (local fakes over real HTTP) each got exactly
one trigger and one resolve per alert; the webhook's signatures verify with the configured secret; no body
names a patient."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.processes import Proc, wait_until
from devstack.scenario import Scenario, scenario_for
from tests.app.alerts.fake_sinks import FakeSink, Received, fake_sink
from tests.conftest import BASE_DATABASE_URL, REDIS_URL
from tests.e2e.sql import scalar

pytestmark = pytest.mark.e2e

FACILITIES = ["fac-once-a", "fac-once-b"]
KINDS = ("dead_letters", "error_rate")  # what a dead EHR raises at each facility (both facility-wide)
FAILED_CHANGES = 8  # per facility: over error_min (5) failures, at a rate over 0.2
SINKS = ("oncall", "chat", "hook")


@pytest.fixture
def sinks() -> Iterator[dict[str, FakeSink]]:
    with fake_sink("pagerduty") as pagerduty, fake_sink("slack") as slack, fake_sink("webhook") as webhook:
        yield {"oncall": pagerduty, "chat": slack, "hook": webhook}


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    sc = scenario_for(
        tmp_path, base_database_url=BASE_DATABASE_URL, redis_url=REDIS_URL, facilities=FACILITIES
    )
    sc.prepare()
    try:
        yield sc
    finally:
        failed_logs = {p.name: p.log_tail(30) for p in (sc.stack.procs if sc.stack else [])}
        sc.teardown()
        for name, tail in failed_logs.items():
            print(f"--- {name}\n{tail}")  # shown by pytest only when the test failed


def _sink_settings(workdir: Path, sinks: dict[str, FakeSink], webhook_secret: str) -> dict[str, str]:
    path = workdir / "alert-sinks.yaml"
    config = [
        {
            "name": "oncall",
            "type": "pagerduty",
            "routing_key": {"env": "EHRI_TEST_PD_KEY"},
            "url": f"{sinks['oncall'].url}/v2/enqueue",
        },
        {"name": "chat", "type": "slack", "webhook_url": {"env": "EHRI_TEST_SLACK_URL"}},
        {
            "name": "hook",
            "type": "webhook",
            "url": f"{sinks['hook'].url}/alerts",
            "secret": {"env": "EHRI_TEST_HOOK_SECRET"},
        },
    ]
    path.write_text(yaml.safe_dump({"sinks": [{**s, "min_severity": "warning"} for s in config]}))
    return {
        "EHRI_ALERT_SINKS_FILE": str(path),
        "EHRI_TEST_PD_KEY": "pd-routing-key-0123456789abcdef",
        "EHRI_TEST_SLACK_URL": f"{sinks['chat'].url}/services/T000/B000/XXXX",
        "EHRI_TEST_HOOK_SECRET": webhook_secret,
        "EHRI_ALERT_EVALUATE_INTERVAL": "PT1S",
        "EHRI_ALERT_RESOLVE_DELAY": "PT0S",  # a healthy evaluation resolves at once: the tightest race
        "EHRI_MAX_ATTEMPTS": "2",  # a read the EHR fails twice is a dead letter
        "EHRI_RECONCILE_TICK": "PT1H",  # no reconcile: the alerts are the dead EHR's only
    }


def _faults(scenario: Scenario, facility: str, body: dict[str, Any]) -> None:
    response = httpx.post(f"{scenario.sim_url}/_admin/{facility}/faults", json=body, timeout=10)
    response.raise_for_status()


def _count(scenario: Scenario, sql: str) -> int:
    return int(scalar(scenario, sql) or 0)


def _alerts(scenario: Scenario) -> list[Any]:
    return scenario.sql(
        "SELECT id, facility_id, source, kind, state, reopened, dedup_key, opened_at, last_seen_at"
        " FROM alerts ORDER BY id"
    )


def _actions(sink: str, received: list[Received]) -> list[tuple[str, str]]:
    """(dedup key, action) of every request a sink received, read the way that sink's service reads it."""
    found = []
    for r in received:
        body = r.json()
        if sink == "oncall":
            found.append((body["dedup_key"], body["event_action"]))
        elif sink == "chat":
            (key,) = re.findall(r"dedup key `([^`]+)`", json.dumps(body["blocks"]))
            verb = body["blocks"][0]["text"]["text"].split(":")[0]
            found.append((key, {"Alert": "trigger", "Resolved": "resolve"}.get(verb, verb)))
        else:
            found.append((body["data"]["dedup_key"], body["type"].removeprefix("alert.")))
    return found


def _verify_standard_webhook(secret: str, request: Received) -> bool:
    """The Standard Webhooks check a receiver makes, written from the spec (not the product's code)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    signed = f"{msg_id}.{stamp}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [
        s.removeprefix("v1,") for s in request.headers["webhook-signature"].split() if s.startswith("v1,")
    ]
    fresh = abs(time.time() - int(stamp)) < 300
    return fresh and any(hmac.compare_digest(expected, s) for s in offered)


def _patient_values(scenario: Scenario) -> tuple[list[str], list[str]]:
    """(identifier values and birth dates, matched anywhere; names, matched as whole words) of every patient
    in ehrsim."""
    anywhere: list[str] = []
    words: list[str] = []
    for facility in FACILITIES:
        for resource in scenario.truth(facility, content=True):
            patient = resource.get("content")
            if resource["resourceType"] != "Patient" or patient is None:
                continue
            anywhere += [str(i["value"]) for i in patient.get("identifier", []) if i.get("value")]
            anywhere += [patient["birthDate"]] if patient.get("birthDate") else []
            for name in patient.get("name", []):
                words += [name["family"]] if name.get("family") else []
                words += name.get("given", [])
    return anywhere, words


def _evaluations_sent(beat: Proc) -> int:
    return beat.log_path.read_text(errors="replace").count("alerts.evaluate")


def _cycles_run(worker: Proc) -> Counter[str]:
    """The worker's finished ``alerts.evaluate`` tasks: ``evaluated`` (took the lock) or ``skipped``."""
    done = re.findall(
        r"alerts\.evaluate\[[^]]+\] succeeded[^{]*\{'evaluated': (\d)", worker.log_path.read_text()
    )
    return Counter("evaluated" if flag == "1" else "skipped" for flag in done)


def test_two_beats_and_three_workers_send_each_alert_once(
    scenario: Scenario, sinks: dict[str, FakeSink]
) -> None:
    started = time.monotonic()
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = _sink_settings(scenario.workdir, sinks, webhook_secret)
    stack = scenario.start(workers=3, concurrency=2, beat=False, env=env)
    beats = [stack.start_beat("beat-a"), stack.start_beat("beat-b")]
    assert len({p.log_path for p in stack.procs}) == len(stack.procs)  # a log (and schedule) of its own

    for facility in FACILITIES:  # a healthy start: a token issued, one change stored
        scenario.make_changes(facility, 1)
    for facility in FACILITIES:
        assert scenario.wait_for_ledger(facility, timeout=30).ok

    # The EHR answers 500 to every read: each change's row fails twice and is dead-lettered.
    for facility in FACILITIES:
        _faults(scenario, facility, {"error_burst": {"requests": 1_000_000, "status": 500}})
        scenario.make_changes(facility, FAILED_CHANGES)
    rows = "SELECT count(*) FROM inbox WHERE facility_id = '{f}' AND status = '{s}'"
    wait_until(
        lambda: all(
            _count(scenario, rows.format(f=f, s="dead")) >= 5
            and _count(scenario, rows.format(f=f, s="pending")) == 0
            for f in FACILITIES
        ),
        timeout=30,
        what="the failing reads to be dead letters",
    )
    expected = {(f, "facility", k) for f in FACILITIES for k in KINDS}

    def all_sent(action: str) -> bool:
        return all(
            sum(a == action for _, a in _actions(n, s.received)) >= len(expected) for n, s in sinks.items()
        )

    wait_until(lambda: all_sent("trigger"), timeout=30, what="a trigger of every alert at every sink")
    # Both beats keep evaluating the held conditions: let a few seconds of cycles see them open.
    wait_until(
        lambda: (
            min(a.last_seen_at for a in _alerts(scenario)) - max(a.opened_at for a in _alerts(scenario))
            >= timedelta(seconds=4)
        ),
        timeout=30,
        what="cycles to keep seeing the open alerts",
    )

    # The EHR recovers; the dead letters are replayed with the CLI, as the runbook says.
    cli = str(Path(sys.executable).parent / "ehr-ingest")
    for facility in FACILITIES:
        httpx.delete(f"{scenario.sim_url}/_admin/{facility}/faults", timeout=10).raise_for_status()
        subprocess.run(
            [cli, "dead-letters", "replay", "--facility", facility],
            env=stack.env,
            check=True,
            capture_output=True,
        )
    for facility in FACILITIES:
        report = scenario.wait_for_ledger(facility, timeout=30)
        assert report.ok, (report.missing, report.behind, report.inbox)
    wait_until(lambda: all_sent("resolve"), timeout=30, what="a resolve of every alert at every sink")
    # ... and both beats keep evaluating the healthy facilities for a few more cycles each.
    resolved_at = [_evaluations_sent(b) for b in beats]
    wait_until(
        lambda: all(_evaluations_sent(b) >= n + 4 for b, n in zip(beats, resolved_at, strict=True)),
        timeout=30,
        what="more cycles of both beats",
    )
    anywhere, words = _patient_values(scenario)
    workers = [p for p in stack.procs if p.name.startswith("worker")]
    stack.stop()  # nothing in flight while we count

    # Both beats asked, and the cycles ran on more than one node, some of them at once.
    cycles = {p.name: _cycles_run(p) for p in workers}
    assert all(_evaluations_sent(b) >= 10 for b in beats)
    assert sum(1 for c in cycles.values() if c["evaluated"]) >= 2, cycles

    alerts = _alerts(scenario)
    assert Counter((a.facility_id, a.source, a.kind) for a in alerts) == Counter(expected)
    assert {(a.state, a.reopened) for a in alerts} == {("resolved", 0)}
    events = scenario.sql("SELECT alert_id, event FROM alert_events ORDER BY id")
    for alert in alerts:
        assert [e.event for e in events if e.alert_id == alert.id] == ["opened", "resolved"], alert.kind
    deliveries = scenario.sql("SELECT alert_id, sink, action, state FROM alert_deliveries")
    assert Counter((d.alert_id, d.sink, d.action, d.state) for d in deliveries) == Counter(
        (a.id, s, action, "sent") for a in alerts for s in SINKS for action in ("trigger", "resolve")
    )

    keys = {a.dedup_key for a in alerts}
    for name, sink in sinks.items():
        assert sink.accepted() == sink.received, name  # nothing refused: no retry could have doubled a send
        assert Counter(_actions(name, sink.received)) == Counter(
            (k, action) for k in keys for action in ("trigger", "resolve")
        ), name
    hook = sinks["hook"].received
    assert len({r.headers["webhook-id"] for r in hook}) == len(hook)
    assert all(_verify_standard_webhook(webhook_secret, r) for r in hook)
    assert not _verify_standard_webhook("whsec_" + base64.b64encode(b"another secret").decode(), hook[0])

    assert anywhere, "ehrsim made no patients to look for"
    assert words
    bodies = {f"{n}#{i}": r.body.decode() for n, s in sinks.items() for i, r in enumerate(s.received)}
    found = [(where, v) for where, body in bodies.items() for v in anywhere if v in body]
    found += [
        (where, v)
        for where, body in bodies.items()
        for v in words
        if re.search(rf"(?<![\w-]){re.escape(v)}(?![\w-])", body)
    ]
    assert found == [], f"patient data in sink bodies: {sorted(set(found))}"
    elapsed = time.monotonic() - started
    total = sum(cycles.values(), Counter())
    print(
        f"{len(alerts)} alerts, {sum(len(s.received) for s in sinks.values())} sends;"
        f" cycles {dict(total)} on {len(cycles)} nodes; {elapsed:.1f} s"
    )

"""What the real worker processes build, measured at the EHR (ehrsim over HTTP): the facility's ``limits:``
hold across processes, one token serves every process, a Retry-After pauses them all, and the token
lifecycle reaches ``token_events``. Unit tests cover each part; this proves the composition root wires them.
"""

from __future__ import annotations

import itertools
import json
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from app.queue import enqueue_drain, make_celery
from app.settings import Settings
from devstack.processes import free_port, wait_until
from devstack.scenario import Scenario
from tests.e2e.scrape import reachable, scrape, total

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"
LIMITS = {"requests_per_second": 2, "burst": 1, "concurrency": 1}
PAUSE_S = 3


def _set_limits(scenario: Scenario, limits: dict[str, Any]) -> None:
    engine = create_engine(scenario.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE facilities SET limits = CAST(:l AS jsonb), updated_at = now() WHERE id = :f"),
                {"l": json.dumps(limits), "f": FACILITY},
            )
    finally:
        engine.dispose()


def _token_events(scenario: Scenario) -> dict[str, int]:
    engine = create_engine(scenario.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT event, count(*) FROM token_events WHERE facility_id = :f GROUP BY event"),
                {"f": FACILITY},
            ).all()
    finally:
        engine.dispose()
    return {str(event): int(n) for event, n in rows}


def _requests(scenario: Scenario) -> dict[str, list[dict[str, Any]]]:
    response = httpx.get(f"{scenario.sim_url}/_admin/{FACILITY}/requests", timeout=10)
    response.raise_for_status()
    body: dict[str, list[dict[str, Any]]] = response.json()
    return body


def _ring_every_process(scenario: Scenario, *, rows: int) -> None:
    """One drain per worker process once the rows are in: the receiver's doorbell would often wake just
    one, which then drains everything alone. Duplicate drains are harmless (they claim disjoint rows)."""
    wait_until(
        lambda: scenario.ledger(FACILITY).inbox.get("pending", 0) >= rows, timeout=30, what="inbox rows"
    )
    env = scenario.env()
    settings = Settings(
        redis_url=scenario.redis_url, redis_prefix=scenario.redis_prefix, queue=env["EHRI_QUEUE"]
    )
    celery = make_celery(settings)
    try:
        for _ in range(4):
            enqueue_drain(celery, settings.queue, FACILITY)
    finally:
        celery.close()


def _start_workers(scenario: Scenario) -> list[int]:
    """Two worker nodes of two processes each; small batches, so every process gets a share of the work.
    Returns the nodes' metrics ports."""
    stack = scenario.start(workers=0, beat=False)
    stack.env["EHRI_DRAIN_BATCH"] = "2"
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        stack.start_worker(f"worker{n}", 2, metrics_port=port)
    return ports


def test_real_workers_keep_limits_share_one_token_and_pause_together_on_retry_after(
    scenario: Scenario,
) -> None:
    _set_limits(scenario, LIMITS)
    ports = _start_workers(scenario)

    # The request rate against the facility's limit.
    scenario.make_changes(FACILITY, 12)
    _ring_every_process(scenario, rows=6)
    report = scenario.wait_for_ledger(FACILITY, timeout=120)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)
    arrivals = sorted(r["at"] for r in _requests(scenario)["fhir"])
    assert len(arrivals) >= 8
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    print(
        f"\nrate: {len(arrivals)} FHIR requests at {rate:.2f}/s against a limit of"
        f" {LIMITS['requests_per_second']}/s (burst {LIMITS['burst']}); smallest gap {min(gaps):.3f}s"
    )
    assert rate <= LIMITS["requests_per_second"] * 1.1
    for port in ports:  # the limit held although both nodes were sending
        wait_until(partial(reachable, port), timeout=20, what="a worker's metrics")
    by_node = [total(scrape(p), "ehri_ehr_request_seconds_count", facility=FACILITY) for p in ports]
    print(f"EHR requests by worker node: {by_node}")
    assert all(n > 0 for n in by_node)

    # One token for every process of the facility, and its lifecycle in token_events.
    tokens = _requests(scenario)["token"]
    events = _token_events(scenario)
    print(f"token requests for {FACILITY} across 4 worker processes: {len(tokens)}; token_events: {events}")
    assert len(tokens) == 1
    assert events == {"issued": 1}

    # A 429 with Retry-After pauses every process, not only the one that got it.
    httpx.post(
        f"{scenario.sim_url}/_admin/{FACILITY}/faults",
        json={"throttle": {"requests": 1, "retry_after_s": PAUSE_S}},
        timeout=10,
    ).raise_for_status()
    before = len(_requests(scenario)["fhir"])
    scenario.make_changes(FACILITY, 8)
    _ring_every_process(scenario, rows=4)
    report = scenario.wait_for_ledger(FACILITY, timeout=120)
    assert report.ok, (report.missing, report.behind, report.not_tombstoned, report.inbox)
    later = _requests(scenario)["fhir"][before:]
    throttled = [r["at"] for r in later if r["fault"] == 429]
    assert len(throttled) == 1
    after = sorted(r["at"] for r in later if r["at"] > throttled[0])
    assert after, "no request after the 429"
    quiet = after[0] - throttled[0]
    print(f"after a 429 with Retry-After: {PAUSE_S}, the next request (any process) came {quiet:.2f}s later")
    assert quiet >= PAUSE_S - 0.1

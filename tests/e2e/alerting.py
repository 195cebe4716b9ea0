"""Shared pieces of the end-to-end alerting tests: a local fake PagerDuty over real HTTP wired in as the
global sink (``EHRI_ALERT_SINKS_FILE``, its routing key from the environment), the alerting settings that
make a cycle short, a facility's ``feed_health`` and ``reconcile`` blocks written the way
``facilities apply`` stores them, and what PagerDuty received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.facilities.schemas import FeedHealthConfig, ReconcileConfig
from devstack.scenario import Scenario
from tests.app.alerts.fake_sinks import FakeSink, fake_sink

PD_KEY_ENV = "EHRI_E2E_PD_ROUTING_KEY"


@dataclass
class PagerDuty:
    """The fake PagerDuty and the environment every process needs to page it."""

    sink: FakeSink
    env: dict[str, str]

    def events(self) -> list[dict[str, Any]]:
        """Every event PagerDuty accepted, in arrival order (whatever its kind or alert)."""
        return [r.json() for r in self.sink.accepted()]

    def actions(self) -> list[tuple[str, str]]:
        """(event_action, dedup_key) of every request received, refused ones included."""
        return [(body["event_action"], body["dedup_key"]) for body in (r.json() for r in self.sink.received)]

    def triggers(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event_action"] == "trigger"]


@contextmanager
def paging(workdir: Path) -> Iterator[PagerDuty]:
    """A fake PagerDuty as the only global sink (every severity), its sinks file in ``workdir``; ``env``
    for ``Scenario.start``. A test module wraps it in a fixture of its own."""
    with fake_sink("pagerduty") as sink:
        sinks = workdir / "alert-sinks.yaml"
        sinks.write_text(
            yaml.safe_dump(
                {
                    "sinks": [
                        {
                            "name": "oncall",
                            "type": "pagerduty",
                            "routing_key": {"env": PD_KEY_ENV},
                            "url": sink.url + "/v2/enqueue",
                            "min_severity": "info",
                        }
                    ]
                }
            )
        )
        yield PagerDuty(
            sink,
            {
                "EHRI_ALERT_SINKS_FILE": str(sinks),
                PD_KEY_ENV: "pd-e2e-routing-key-0123456789abcdef",
                "EHRI_ALERT_EVALUATE_INTERVAL": "PT1S",
                "EHRI_ALERT_RESOLVE_DELAY": "PT2S",
            },
        )


def configure(
    scenario: Scenario,
    facility_id: str,
    *,
    feed_health: dict[str, Any] | None = None,
    reconcile: dict[str, Any] | None = None,
) -> None:
    """Store a facility's ``feed_health`` / ``reconcile`` blocks, validated by the schemas ``facilities
    apply`` validates them with (so a typo fails here, not silently as the defaults)."""
    if feed_health is not None:
        stored = FeedHealthConfig.model_validate(feed_health).model_dump(mode="json", exclude_unset=True)
        scenario.sql(
            "UPDATE facilities SET feed_health = CAST(:v AS jsonb), updated_at = now() WHERE id = :f",
            v=json.dumps(stored),
            f=facility_id,
        )
    if reconcile is not None:
        ReconcileConfig.model_validate(reconcile)
        scenario.sql(
            "UPDATE facilities SET reconcile = CAST(:v AS jsonb), updated_at = now() WHERE id = :f",
            v=json.dumps(reconcile),
            f=facility_id,
        )


def alert_cycles(scenario: Scenario) -> int:
    """How many alerting cycles the workers finished (their ``alerts.evaluate`` successes)."""
    assert scenario.stack is not None
    return sum(
        1
        for proc in scenario.stack.procs
        if proc.name.startswith("worker") and proc.log_path.exists()
        for line in proc.log_path.read_text(errors="replace").splitlines()
        if "Task alerts.evaluate[" in line and "] succeeded" in line
    )

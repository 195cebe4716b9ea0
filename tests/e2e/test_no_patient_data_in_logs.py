"""No patient data in any log line of any of our processes, at the most verbose level, through the whole
flow: patients created in ehrsim and fetched by id, then named by identifier only (the focus shape that
puts an MRN into a search URL), with the EHR failing some of the searches."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from devstack.processes import wait_until
from devstack.scenario import Scenario

pytestmark = pytest.mark.e2e

FACILITY = "fac-e2e"


def _patients(database_url: str) -> list[dict[str, Any]]:
    """The Patient resources as fetched from ehrsim (their content is ehrsim's generator's)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT resource FROM resources WHERE resource_type = 'Patient' AND NOT deleted")
            )
            return [row.resource for row in rows]
    finally:
        engine.dispose()


def _inbox_by_identifier(database_url: str) -> list[tuple[str, int]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT status, attempts FROM inbox WHERE focus_identifier IS NOT NULL ORDER BY id")
            )
            return [(row.status, row.attempts) for row in rows]
    finally:
        engine.dispose()


def _identifying_values(patient: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(values matched anywhere, values matched as whole words)."""
    anywhere = [str(i["value"]).strip() for i in patient.get("identifier", [])]
    anywhere.append(patient["birthDate"])
    words = [t["value"] for t in patient.get("telecom", [])]
    for name in patient.get("name", []):
        words += [name["family"], *name.get("given", [])] if "family" in name else name.get("given", [])
    return anywhere, words


def _identifier_notification(sim_url: str, number: int, identifier: dict[str, Any]) -> dict[str, Any]:
    """An R4B SubscriptionStatus bundle whose focus is an identifier only, as athena sends them."""
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "subscription": {"reference": f"{sim_url}/{FACILITY}/fhir/Subscription/sub-by-identifier"},
        "topic": "http://example.org/fhir/SubscriptionTopic/all-changes",
        "notificationEvent": [
            {
                "eventNumber": str(number),
                "timestamp": "2026-11-24T10:00:00Z",
                "focus": {"type": "Patient", "identifier": identifier},
            }
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": "2026-11-24T10:00:00Z",
        "entry": [{"fullUrl": "urn:uuid:status", "resource": status}],
    }


def test_no_identifier_name_birth_date_or_phone_reaches_any_log_line(scenario: Scenario) -> None:
    stack = scenario.start(workers=1, concurrency=2, beat=True, env={"EHRI_LOG_LEVEL": "DEBUG"})
    scenario.make_changes(FACILITY, 150)
    assert scenario.wait_for_ledger(FACILITY, timeout=60).ok
    patients = _patients(scenario.database_url)
    assert len(patients) >= 3, "the generator made too few patients to test with"
    # The EHR answers 500 to the next requests: retries, failures and back-off get logged.
    faults = {"error_burst": {"requests": 8, "status": 500}}
    httpx.post(f"{scenario.sim_url}/_admin/{FACILITY}/faults", json=faults, timeout=10).raise_for_status()
    secret = scenario.webhook_secret(FACILITY)
    for number, patient in enumerate(patients, start=1):
        identifier = {k: patient["identifier"][0][k] for k in ("system", "value")}
        response = httpx.post(
            f"{scenario.receiver_url}/hooks/{FACILITY}",
            json=_identifier_notification(scenario.sim_url, number, identifier),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/fhir+json"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
    # Every identifier-only row has been tried at least once, so its search was sent (and logged, if at all).
    wait_until(
        lambda: (
            len(rows := _inbox_by_identifier(scenario.database_url)) == len(patients)
            and all(attempts > 0 for _, attempts in rows)
        ),
        timeout=60,
        what="the identifier-only rows to be worked",
    )
    ours = [p for p in stack.procs if p.name != "ehrsim"]  # ehrsim is the EHR: its logs are not ours
    stack.stop()  # shutdown lines and tracebacks count too

    logs = {p.name: p.log_path.read_text(errors="replace") for p in ours}
    assert set(logs) == {"receiver", "worker0", "beat"}
    found = []
    for patient in patients:
        anywhere, words = _identifying_values(patient)
        for name, log in logs.items():
            found += [(name, v) for v in anywhere if v in log]
            found += [(name, v) for v in words if re.search(rf"(?<![\w-]){re.escape(v)}(?![\w-])", log)]
    assert found == [], f"patient data in logs: {sorted(set(found))}"

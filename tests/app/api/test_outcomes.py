"""The edge's one mapping from kernel outcomes to HTTP answers: every kind has its status code, an
OperationOutcome body with a reason, and every 503 says when to retry."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest

from app.api.endpoints import respond
from app.ingest.receiver import (
    Accepted,
    DbUnavailable,
    InvalidJson,
    Misconfigured,
    Outcome,
    Quarantined,
    Rejected,
    TooLarge,
    Unauthenticated,
    UnknownFacility,
    UnsupportedMediaType,
)

# (outcome, status, OperationOutcome issue code, reason code or None for the 200)
TABLE: list[tuple[Outcome, int, str, str | None]] = [
    (Accepted("event-notification", 2, 1, 0), 200, "informational", None),
    (Quarantined(7, "not_a_notification", "a Bundle that is not a notification"), 202, "processing",
     "not_a_notification"),
    (UnknownFacility(), 401, "security", "unauthenticated"),  # indistinguishable from a wrong secret
    (Unauthenticated("bad_signature", "x-signature"), 401, "security", "unauthenticated"),
    (UnsupportedMediaType(missing=False), 415, "not-supported", "content_type"),
    (UnsupportedMediaType(missing=True), 415, "not-supported", "content_type"),
    (TooLarge(1024), 413, "too-costly", "too_large"),
    (InvalidJson("body is not valid JSON"), 400, "invalid", "invalid_json"),
    (Rejected("bad_reference", "PUT and DELETE need /{Type}/{id}"), 400, "invalid", "bad_reference"),
    (DbUnavailable("commit"), 503, "transient", "db_unavailable"),
    (Misconfigured("secret_missing"), 503, "transient", "secret_missing"),
]  # fmt: skip


def _issue(body: bytes | memoryview) -> dict[str, Any]:
    outcome: dict[str, Any] = json.loads(bytes(body))
    assert outcome["resourceType"] == "OperationOutcome"
    issue: dict[str, Any] = outcome["issue"][0]
    return issue


def test_the_table_covers_every_outcome_kind() -> None:
    assert {type(o) for o, *_ in TABLE} == set(get_args(Outcome))


@pytest.mark.parametrize(("outcome", "status", "code", "reason"), TABLE)
def test_each_outcome_maps_to_its_status_code_and_operation_outcome(
    outcome: Outcome, status: int, code: str, reason: str | None
) -> None:
    response = respond(outcome)
    assert response.status_code == status
    assert response.media_type == "application/fhir+json"
    issue = _issue(response.body)
    assert issue["code"] == code
    if reason is not None:
        assert issue["details"]["coding"][0]["code"] == reason
    assert (response.headers.get("retry-after") == "5") is (status == 503)


def test_the_reason_code_is_the_outcome_slug_of_the_metrics() -> None:
    """Except for an unknown facility: the metric tells it apart, the answer must not."""
    for outcome, _, _, reason in TABLE:
        assert outcome.slug == (reason or "accepted") or isinstance(outcome, (Quarantined, UnknownFacility))


def test_accepted_says_what_was_stored() -> None:
    issue = _issue(respond(Accepted("event-notification", 2, 1, 3)).body)
    assert issue["diagnostics"] == "event-notification: 2 stored, 1 duplicate, 3 refused"


def test_unauthenticated_says_nothing_of_the_facility_s_configuration() -> None:
    """Neither the reason nor the header (the log line has both): they would tell a caller that the
    facility exists and how it authenticates."""
    answers = {
        bytes(respond(outcome).body)
        for outcome in (
            Unauthenticated("wrong_secret", "authorization"),
            Unauthenticated("bad_signature", "x-signature"),
            UnknownFacility(),
        )
    }
    assert len(answers) == 1
    assert _issue(answers.pop())["diagnostics"] == "sender not authenticated"


def test_quarantine_answer_names_the_quarantine_id() -> None:
    issue = _issue(respond(Quarantined(42, "not_a_bundle", "expected a FHIR Bundle")).body)
    assert issue["severity"] == "warning"
    assert "kept as quarantine #42" in issue["diagnostics"]

"""OperationOutcome bodies for every answer the receiver gives: a reason a human can act on."""

from __future__ import annotations

from typing import Any


def operation_outcome(
    severity: str, code: str, diagnostics: str, *, reason: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if reason is not None:
        issue["details"] = {"coding": [{"system": "urn:ehr-ingest:reason", "code": reason}]}
    return {"resourceType": "OperationOutcome", "issue": [issue]}

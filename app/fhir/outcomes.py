"""OperationOutcome bodies: those the receiver answers (a reason a human can act on), and the codes read
from those an EHR answers."""

from __future__ import annotations

from typing import Any


def operation_outcome(
    severity: str, code: str, diagnostics: str, *, reason: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if reason is not None:
        issue["details"] = {"coding": [{"system": "urn:ehr-ingest:reason", "code": reason}]}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _issues(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    issues = body.get("issue")
    return [i for i in (issues if isinstance(issues, list) else []) if isinstance(i, dict)]


def outcome_detail_codes(body: Any) -> frozenset[str]:
    """The vendor codes in an OperationOutcome's ``issue.details.coding`` (Epic's 4113…), empty for
    anything else."""
    codes: set[str] = set()
    for issue in _issues(body):
        details = issue.get("details")
        codings = details.get("coding") if isinstance(details, dict) else None
        for coding in codings if isinstance(codings, list) else []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                codes.add(coding["code"][:32])
    return frozenset(codes)


def outcome_issue_codes(body: Any) -> frozenset[str]:
    """The issue codes of an OperationOutcome body (empty for anything else); codes are FHIR vocabulary,
    never patient data, so they may be logged."""
    return frozenset(str(i["code"])[:32] for i in _issues(body) if isinstance(i.get("code"), str))

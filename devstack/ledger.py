"""The ledger check of FAULTS.md: every change made in the EHR reached Postgres (lost = 0).

For every (facility, type, id) the simulator reports, the stored row must be at the EHR's current
version, or a tombstone when the EHR deleted it. Where the EHR serves versions (``meta.versionId``) the
stored ``version_id`` must be the current one; where it serves none (Epic: ``versioned`` false in the
truth) the content must be: the stored body, as consumers read it (``current_resources``), against the
resource as the EHR serves it now, both hashed by ``app.fhir.resources.content_hash`` (one rule for both
sides, the one the version guard uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.fhir import jsonwire
from app.fhir.resources import content_hash

_CURRENT = text(
    """
    SELECT resource_type, resource_id, version_id, deleted, CAST(resource AS text) AS body
    FROM current_resources WHERE facility_id = :fid
    """
)
_INBOX = text("SELECT status, count(*) AS n FROM inbox WHERE facility_id = :fid GROUP BY status")


@dataclass
class LedgerReport:
    facility_id: str
    expected: int = 0
    matched: int = 0
    missing: list[str] = field(default_factory=list)  # never stored
    behind: list[str] = field(default_factory=list)  # stored, at an older version
    not_tombstoned: list[str] = field(default_factory=list)  # deleted in the EHR, live here
    inbox: dict[str, int] = field(default_factory=dict)
    undelivered: int = 0  # notifications the EHR's sender still holds (set by the caller that asks it)

    @property
    def unmatched(self) -> int:
        """Changes not in Postgres at the EHR's version: lost once drained, maybe on their way before."""
        return len(self.missing) + len(self.behind) + len(self.not_tombstoned)

    @property
    def pending(self) -> int:
        """Work still in flight: undelivered notifications and inbox rows not yet done or dead."""
        return self.undelivered + self.inbox.get("pending", 0)

    @property
    def drained(self) -> bool:
        return self.pending == 0

    @property
    def lost(self) -> int:
        """Changes that will not arrive: counted only when nothing is pending any more."""
        return self.unmatched if self.drained else 0

    @property
    def ok(self) -> bool:
        return self.drained and self.unmatched == 0


def check_ledger(session: Session, facility_id: str, truth: list[dict[str, Any]]) -> LedgerReport:
    """``truth``: ehrsim's ``/_admin/{facility}/truth`` resources, with ``content`` (``?content=true``)
    wherever they are not ``versioned``."""
    stored = {(r.resource_type, r.resource_id): r for r in session.execute(_CURRENT, {"fid": facility_id})}
    report = LedgerReport(facility_id, expected=len(truth))
    for item in truth:
        key = (item["resourceType"], item["id"])
        label = f"{key[0]}/{key[1]}"
        row = stored.get(key)
        if row is None:
            report.missing.append(label)
        elif item.get("deleted"):
            if row.deleted:
                report.matched += 1
            else:
                report.not_tombstoned.append(label)
        elif row.deleted or not _current(row, item):
            report.behind.append(label)
        else:
            report.matched += 1
    report.inbox = {r.status: int(r.n) for r in session.execute(_INBOX, {"fid": facility_id})}
    return report


def _current(row: Any, item: dict[str, Any]) -> bool:
    """Whether the live stored ``row`` is the EHR's current version of ``item``."""
    if item.get("versioned", True):
        return bool(row.version_id == str(item["versionId"]))
    if "content" not in item:
        raise ValueError(f"{item['resourceType']} has no versions: the truth must carry its content")
    # The body as text, decoded here as the product decodes FHIR (decimals exact), whatever JSON loader
    # the caller's engine has.
    stored = jsonwire.loads(row.body) if row.body is not None else None
    return content_hash(stored) == content_hash(item["content"])


@dataclass
class AdtLedgerReport:
    """The MLLP half of the ledger check: ehrsim's record of its ADT messages (``GET
    /_admin/{facility}/mllp`` ``messages``) against the control ids (MSH-10) the product stored.
    Control ids only: no PID or PV1 value is read or reported."""

    facility_id: str
    sent: int = 0
    acked: int = 0
    pending: int = 0  # messages ehrsim still holds (queued, or waiting for an ACK)
    rejected: list[str] = field(default_factory=list)  # answered AR: ehrsim will not resend them
    failed: list[str] = field(default_factory=list)  # given up after ehrsim's max_attempts
    acked_not_stored: list[str] = field(default_factory=list)  # AA without a stored message: lost

    @property
    def ok(self) -> bool:
        return self.pending == 0 and not self.acked_not_stored and not self.failed


def check_adt_ledger(
    facility_id: str, messages: list[dict[str, Any]], stored_control_ids: set[str]
) -> AdtLedgerReport:
    """Every message the EHR saw acknowledged ``AA`` must be stored; ``stored_control_ids`` are the
    facility's distinct MSH-10 values in Postgres (``adt_events``)."""
    report = AdtLedgerReport(facility_id, sent=len(messages))
    for message in messages:
        control_id = str(message["control_id"])
        status = message["status"]
        if status == "acked":
            report.acked += 1
            if control_id not in stored_control_ids:
                report.acked_not_stored.append(control_id)
        elif status == "pending":
            report.pending += 1
        elif status == "rejected":
            report.rejected.append(control_id)
        else:
            report.failed.append(control_id)
    return report

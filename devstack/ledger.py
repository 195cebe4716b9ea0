"""The ledger check of FAULTS.md: every change made in the EHR reached Postgres (lost = 0).

For every (facility, type, id) the simulator reports, the stored row must be at the EHR's current
version, or a tombstone when the EHR deleted it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

_CURRENT = text(
    """
    SELECT resource_type, resource_id, version_id, deleted FROM current_resources WHERE facility_id = :fid
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
        elif row.deleted or row.version_id != str(item["versionId"]):
            report.behind.append(label)
        else:
            report.matched += 1
    report.inbox = {r.status: int(r.n) for r in session.execute(_INBOX, {"fid": facility_id})}
    return report

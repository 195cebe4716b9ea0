"""The facility's configured cohort Group (``reconcile.group``): its Patient members join the cohort the
per-patient strategies poll (``queries.COHORT``).

Each run that has a per-patient type reads ``Group/{id}`` through the facility's background client (its
token, politeness and rate budget, behind live fetches) and keeps the Patient ids of ``member[].entity``
in ``reconcile_group_members``, replacing what the last good read listed. A member marked ``inactive`` is
left out, as is an entity that is no Patient or a reference outside the facility's base URL (counted,
never logged by id). A read that fails (after the client's retries) stops nothing: the reason is kept on
``reconcile_groups`` and in the run's reasons, and the members of the last good read stay in the cohort.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import ReconcileGroup, ReconcileGroupMember
from app.db.upsert import upsert
from app.ehr.client import EHRClient
from app.errors import GroupNotFound, IngestError
from app.fhir.references import ResourceRef, parse_reference

log = structlog.get_logger("reconcile")


def group_patients(group: dict[str, Any], base_url: str) -> tuple[list[str], int]:
    """The Patient ids a Group's active members name, and how many members were left out."""
    patients: set[str] = set()
    skipped = 0
    members = group.get("member")
    for member in members if isinstance(members, list) else []:
        entity = member.get("entity") if isinstance(member, dict) else None
        reference = entity.get("reference") if isinstance(entity, dict) else None
        if not isinstance(reference, str) or member.get("inactive") is True:
            skipped += 1
            continue
        try:
            ref = parse_reference(reference, base_url)
        except IngestError:  # no reference, or one outside the facility's base URL
            skipped += 1
            continue
        if ref.resource_type != "Patient":
            skipped += 1
            continue
        patients.add(ref.resource_id)
    return sorted(patients), skipped


def refresh_group(
    sessions: sessionmaker[Session], client: EHRClient, facility_id: str, group_id: str
) -> str | None:
    """Read the cohort Group and keep its Patient members; the reason slug when the read failed."""
    now = datetime.now(UTC)
    try:
        result = client.read(ResourceRef("Group", group_id))
        if result.resource is None:
            raise GroupNotFound(str(result.status))
        patients, skipped = group_patients(result.resource, client.base_url)
    except IngestError as exc:
        log.warning("reconcile.group_unread", facility_id=facility_id, reason=exc.reason)
        with sessions.begin() as session:
            _note(session, facility_id, group_id, now, reason=exc.reason)
        return exc.reason
    with sessions.begin() as session:
        session.execute(delete(ReconcileGroupMember).where(ReconcileGroupMember.facility_id == facility_id))
        if patients:
            session.execute(
                insert(ReconcileGroupMember),
                [{"facility_id": facility_id, "group_id": group_id, "patient_id": p} for p in patients],
            )
        _note(session, facility_id, group_id, now, members=len(patients))
    log.info("reconcile.group_read", facility_id=facility_id, members=len(patients), skipped=skipped)
    return None


def _note(
    session: Session,
    facility_id: str,
    group_id: str,
    now: datetime,
    *,
    members: int | None = None,
    reason: str | None = None,
) -> None:
    values: dict[str, Any] = {
        "facility_id": facility_id,
        "group_id": group_id,
        "attempted_at": now,
        "last_reason": reason,
    }
    if reason is None:
        values |= {"read_at": now, "members": members or 0}
    session.execute(upsert(ReconcileGroup, values))

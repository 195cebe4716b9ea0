"""Events → work: an ADT "patient changed" event makes us re-read the patient over FHIR.

The listener commits a message after reading its MSH alone; ``parse_fields`` parses the rest (PID-3,
PV1, MRG: python-hl7) into the row's columns before any claim, in the claim's transaction. Rows are
claimed per patient (every due row of up to ``patients`` MRNs at once, so a burst of A08s for
one patient is one fetch); for each patient: the MRN (PID-3 of the facility's assigning authority,
trimmed) is resolved by the pipeline's identifier search (``Patient?identifier=mrn_system|value``,
cached per process), then the FHIR types the facility's ``hl7v2`` block names for the rows' events are
read with ``{type}?patient={id}`` (patient-scoped, as Epic requires), normalized by the vendor's adapter
and stored through ``Pipeline.store`` (version guard, history, change feed). An A40 also re-reads the
non-surviving patient (its id from earlier messages or the ``patients`` view) and records it on the row
(``merged_patient_id``); both ids stay in ``resources``.

Failures are values: a transient one backs the rows off in Postgres (``next_attempt_at``), up to
``max_attempts``; a permanent one, or a row with no MRN of ours (``adt_no_mrn``), is ``dead`` with its
reason. Idempotent: a duplicate task finds nothing to claim; a repeated fetch converges on the same rows.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import (
    DELETION_NOT_FOUND,
    DELETION_NOT_FOUND_ANNOUNCED,
    INBOX_DEAD,
    INBOX_DONE,
    INBOX_PENDING,
    Facility,
)
from app.ehr.client import EHRClient
from app.errors import AdtNoPatient, IngestError, MessageRejected, NotificationError
from app.facilities.schemas import Hl7v2Config
from app.fhir.references import ResourceRef, resource_ref
from app.hl7v2.inbox import FIELD_TYPES
from app.hl7v2.message import parse
from app.ingest.drain import backoff
from app.ingest.pipeline.normalize import normalize
from app.ingest.pipeline.observed import Observed, read_after_vanishing
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.service import Pipeline, Work
from app.reconcile.queries import STORED_IDS_OF_PATIENT
from app.settings import Settings

log = structlog.get_logger("hl7v2.service")

_CLAIM = text(
    f"""
    WITH due AS (
        SELECT DISTINCT coalesce(mrn, '') AS mrn FROM adt_inbox
        WHERE facility_id = :facility AND status = '{INBOX_PENDING}' AND next_attempt_at <= now()
          AND (lease_until IS NULL OR lease_until < now()) AND parsed
        LIMIT :patients
    ), rows AS (
        SELECT id FROM adt_inbox
        WHERE facility_id = :facility AND status = '{INBOX_PENDING}' AND next_attempt_at <= now()
          AND (lease_until IS NULL OR lease_until < now()) AND parsed
          AND coalesce(mrn, '') IN (SELECT mrn FROM due)
        FOR UPDATE SKIP LOCKED
    )
    UPDATE adt_inbox a SET lease_until = now() + :lease, claim_token = :token, attempts = a.attempts + 1
    FROM rows WHERE a.id = rows.id
    RETURNING a.id, a.mrn, a.prior_mrn, a.event_type, a.visit_number, a.attempts
    """  # noqa: S608 - statuses are constants
)
_DONE = text(
    f"""
    UPDATE adt_inbox SET status = '{INBOX_DONE}', done_at = now(), lease_until = NULL, reason = NULL,
           detail = NULL, patient_id = :patient_id,
           merged_patient_id = CASE WHEN event_type = 'A40' THEN :merged ELSE merged_patient_id END
    WHERE id = ANY(:ids) AND claim_token = :token
    """  # noqa: S608
)
_RETRY = text(
    f"""
    UPDATE adt_inbox SET
        status = CASE WHEN attempts >= :max_attempts OR :permanent THEN '{INBOX_DEAD}' ELSE status END,
        next_attempt_at = now() + :delay, lease_until = NULL, reason = :reason, detail = :detail
    WHERE id = ANY(:ids) AND claim_token = :token
    """  # noqa: S608
)
_KNOWN_PATIENT = text(
    """
    SELECT patient_id FROM adt_inbox WHERE facility_id = :facility AND mrn = :mrn AND patient_id IS NOT NULL
    UNION ALL
    SELECT patient_id FROM patients WHERE facility_id = :facility AND mrn = :mrn
    LIMIT 1
    """
)
FACILITIES_WITH_DUE_ADT = text(
    f"""
    SELECT DISTINCT facility_id FROM adt_inbox
    WHERE status = '{INBOX_PENDING}' AND next_attempt_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
    UNION
    SELECT DISTINCT facility_id FROM adt_inbox WHERE NOT parsed
    """  # noqa: S608
)
_UNPARSED = text(
    """
    SELECT id, raw FROM adt_inbox WHERE facility_id = :facility AND NOT parsed
    ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
    """
)
_FILL = text(
    f"""
    UPDATE adt_inbox a SET {", ".join(f"{c} = f.{c}" for c in FIELD_TYPES)}, parsed = true
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
        AS f(id bigint, {", ".join(f"{c} {t}" for c, t in FIELD_TYPES.items())})
    WHERE a.id = f.id
    """  # noqa: S608 - column names are the constants above
)
#: An identifier longer than this is no MRN (and would not fit the patient index): the row has none.
MAX_MRN_CHARS = 200
PARSE_BATCH = 500


@dataclass(frozen=True)
class ClaimedAdt:
    id: int
    mrn: str | None
    prior_mrn: str | None
    event_type: str | None
    visit_number: str | None
    attempts: int


@dataclass
class PatientWork:
    mrn: str | None
    rows: list[ClaimedAdt] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]


@dataclass
class Claim:
    token: str
    patients: list[PatientWork]


@dataclass
class AdtReport:
    patients: int = 0
    rows: int = 0
    done: int = 0
    retried: int = 0
    dead: int = 0
    stored: int = 0
    parsed: int = 0  # rows whose PID/PV1/MRG fields were read (``parse_fields``)


_REPORT_FIELDS = ("patients", "rows", "done", "retried", "dead", "stored", "parsed")


# Patient ids resolved from MRNs, per process (an MRN names one patient until a merge).
_resolved: dict[tuple[str, str], str] = {}
_resolved_lock = threading.Lock()


def _fields(row_id: int, raw: str, authority: str) -> dict[str, Any]:
    """The PID/PV1/MRG columns of a committed message (all empty when it cannot be parsed)."""
    values: dict[str, Any] = dict.fromkeys(FIELD_TYPES)
    values["id"] = row_id
    try:
        parsed = parse(raw.encode("utf-8", "surrogatepass"))
    except MessageRejected:
        return values  # committed after its MSH was read: nothing further to find
    adt = parsed.adt
    mrn = adt.mrn(authority)
    prior = adt.prior_mrn(authority) if parsed.header.event_type == "A40" else None
    values.update(
        mrn=mrn if mrn is None or len(mrn) <= MAX_MRN_CHARS else None,
        prior_mrn=prior if prior is None or len(prior) <= MAX_MRN_CHARS else None,
        visit_number=adt.visit_number,
        patient_class=adt.patient_class,
        location=adt.location,
        admit_time=adt.admit_time.isoformat() if adt.admit_time else None,
        discharge_time=adt.discharge_time.isoformat() if adt.discharge_time else None,
    )
    for key, value in values.items():
        if isinstance(value, str):
            values[key] = value.replace("\x00", "\ufffd")  # Postgres text holds no NUL
    return values


def parse_fields(session: Session, facility: Facility, *, limit: int = PARSE_BATCH) -> int:
    """Fill the PID/PV1/MRG columns of up to ``limit`` of the facility's rows the listener committed
    unparsed; how many. Idempotent (rows are locked, skipped by a concurrent worker); caller commits."""
    rows = session.execute(_UNPARSED, {"facility": facility.id, "limit": limit}).all()
    if not rows:
        return 0
    authority = _config(facility).mrn_authority
    filled = [_fields(r.id, r.raw, authority) for r in rows]
    session.execute(_FILL, {"rows": json.dumps(filled)})
    return len(rows)


def claim(session: Session, facility_id: str, *, patients: int, lease: timedelta) -> Claim:
    token = str(uuid.uuid4())
    rows = session.execute(
        _CLAIM, {"facility": facility_id, "patients": patients, "lease": lease, "token": token}
    ).all()
    by_mrn: dict[str | None, PatientWork] = {}
    for r in rows:
        by_mrn.setdefault(r.mrn, PatientWork(r.mrn)).rows.append(
            ClaimedAdt(r.id, r.mrn, r.prior_mrn, r.event_type, r.visit_number, r.attempts)
        )
    return Claim(token, list(by_mrn.values()))


def _config(facility: Facility) -> Hl7v2Config:
    return Hl7v2Config.model_validate(facility.hl7v2)


def _search_patient_scoped(
    pipeline: Pipeline, resource_type: str, patient_id: str
) -> list[Observed] | IngestError:
    try:
        bundles = pipeline.client.search(resource_type, {"patient": patient_id})
    except IngestError as exc:
        return exc
    fetched_at = datetime.now(UTC)
    return [
        Observed(pipeline.facility_id, resource_type, str(r["id"]), r, fetched_at)
        for bundle in bundles
        for r in pipeline.adapter.search_entries(bundle)
        if r.get("resourceType") == resource_type and isinstance(r.get("id"), str)
    ]


def _expected(
    session: Session, facility: Facility, work: PatientWork, resource_type: str, patient_id: str
) -> set[str]:
    """The ids of ``resource_type`` the patient's search should list: those stored live for the patient,
    and (``visit_is_encounter_id``) the Encounters the rows announce, which may be gone before any read."""
    ids = {
        str(i)
        for i in session.scalars(
            STORED_IDS_OF_PATIENT,
            {"fid": facility.id, "rtype": resource_type, "ref": f"Patient/{patient_id}"},
        )
    }
    if resource_type == "Encounter" and _config(facility).visit_is_encounter_id:
        ids |= {r.visit_number for r in work.rows if r.visit_number and _is_fhir_id(r.visit_number)}
    return ids


def _is_fhir_id(value: str) -> bool:
    """A PV1-19 that is a FHIR id (never a path to be read: the sender's field, not ours)."""
    try:
        resource_ref("Encounter", value)
    except NotificationError:
        return False
    return True


def _read_vanished(
    pipeline: Pipeline, resource_type: str, ids: set[str], *, now: datetime
) -> list[Observed] | IngestError:
    """Read each id the search did not list, as the reconciler's re-crawl does: a 404/410 is a
    tombstone, a live answer is stored."""
    if not ids:
        return []
    refs = [ResourceRef(resource_type, i) for i in sorted(ids)]
    fetched = pipeline.fetch(Work(reads=refs), now=now)
    found: list[Observed] = []
    for outcome in fetched.reads.values():
        if isinstance(outcome, IngestError):
            return outcome
        found.append(read_after_vanishing(outcome))
    return found + fetched.references


@dataclass
class _Fetched:
    patient_id: str
    merged_patient_id: str | None
    observed: list[Observed]


def _fetch_patient(
    session: Session, pipeline: Pipeline, facility: Facility, work: PatientWork, *, now: datetime
) -> _Fetched | IngestError:
    assert work.mrn is not None
    assert facility.mrn_system is not None
    key = (facility.id, work.mrn)
    found = pipeline.fetch(Work(identifiers=[("Patient", f"{facility.mrn_system}|{work.mrn}")]), now=now)
    resolved = next(iter(found.identifiers.values()))
    if isinstance(resolved, IngestError):
        return resolved
    patient_id = resolved[0].resource_id
    with _resolved_lock:
        _resolved[key] = patient_id
    observed = list(resolved)
    config = _config(facility)
    types: list[str] = []
    for row in work.rows:
        types += [t for t in config.types_for(row.event_type or "") if t != "Patient" and t not in types]
    for resource_type in types:
        expected = _expected(session, facility, work, resource_type, patient_id)
        items = _search_patient_scoped(pipeline, resource_type, patient_id)
        if isinstance(items, IngestError):
            return items
        normalized, _ = normalize(pipeline.adapter, items, now=now)
        observed += normalized
        vanished = _read_vanished(pipeline, resource_type, expected - {o.resource_id for o in items}, now=now)
        if isinstance(vanished, IngestError):
            return vanished
        observed += vanished
    merged = _merged_patient(session, pipeline, facility, work, now=now)
    if isinstance(merged, IngestError):
        return merged
    merged_id, merged_observed = merged
    return _Fetched(patient_id, merged_id, observed + merged_observed)


def _merged_patient(
    session: Session, pipeline: Pipeline, facility: Facility, work: PatientWork, *, now: datetime
) -> tuple[str | None, list[Observed]] | IngestError:
    """A40: re-read the non-surviving patient (a 404/410 is stored as its tombstone; a live one keeps its
    ``replaced-by`` link in the stored body). Unknown to us: nothing to re-read, nothing recorded."""
    prior = next((r.prior_mrn for r in work.rows if r.event_type == "A40" and r.prior_mrn), None)
    if prior is None:
        return None, []
    with _resolved_lock:
        prior_id = _resolved.get((facility.id, prior))
    if prior_id is None:
        prior_id = session.execute(_KNOWN_PATIENT, {"facility": facility.id, "mrn": prior}).scalar()
    if prior_id is None:  # never seen by us: the EHR may still find it by its MRN
        assert facility.mrn_system is not None
        search = pipeline.fetch(Work(identifiers=[("Patient", f"{facility.mrn_system}|{prior}")]), now=now)
        found = next(iter(search.identifiers.values()))
        if not isinstance(found, list):
            return None, []  # not found (or not now): the merge is in adt_events, nothing to re-read
        return found[0].resource_id, found[:1]
    fetched = pipeline.fetch(Work(reads=[ResourceRef("Patient", prior_id)]), now=now)
    outcome = fetched.reads[ResourceRef("Patient", prior_id)]
    if isinstance(outcome, IngestError):
        return outcome
    if outcome.deletion == DELETION_NOT_FOUND:
        # The A40 announced that this patient is gone (merged away): its 404 is an announced deletion.
        outcome = dataclasses.replace(outcome, deletion=DELETION_NOT_FOUND_ANNOUNCED)
    return prior_id, [outcome]


def process_claimed(
    session: Session,
    facility: Facility,
    client: EHRClient,
    claimed: Claim,
    settings: Settings,
    *,
    references: ReferenceCache | None = None,
    now: datetime | None = None,
) -> AdtReport:
    """Fetch and store every claimed patient; the caller commits (one transaction per call)."""
    now = now or datetime.now(UTC)
    pipeline = Pipeline.for_facility(facility, client, settings, references)
    report = AdtReport(patients=len(claimed.patients))
    for work in claimed.patients:
        report.rows += len(work.rows)
        outcome: _Fetched | IngestError = (
            _fetch_patient(session, pipeline, facility, work, now=now)
            if work.mrn is not None
            else AdtNoPatient("PID-3 has no identifier of the facility's MRN assigning authority")
        )
        if isinstance(outcome, IngestError):
            _fail(session, settings, facility.id, claimed.token, work, outcome, report)
            continue
        with session.begin_nested():
            stats = pipeline.store(session, outcome.observed)
            session.execute(
                _DONE,
                {
                    "ids": work.ids,
                    "token": claimed.token,
                    "patient_id": outcome.patient_id,
                    "merged": outcome.merged_patient_id,
                },
            )
        report.done += len(work.rows)
        report.stored += stats.applied
    session.flush()
    return report


def _fail(  # noqa: PLR0917 - one call site, the row's whole context
    session: Session,
    settings: Settings,
    facility_id: str,
    token: str,
    work: PatientWork,
    exc: IngestError,
    report: AdtReport,
) -> None:
    attempts = max(r.attempts for r in work.rows)
    permanent = bool(exc.permanent)
    delay = backoff(settings, attempts, exc.retry_after)
    session.execute(
        _RETRY,
        {
            "ids": work.ids,
            "token": token,
            "max_attempts": settings.max_attempts,
            "permanent": permanent,
            "delay": delay,
            "reason": exc.reason,
            "detail": str(exc)[:500],
        },
    )
    if permanent or attempts >= settings.max_attempts:
        report.dead += len(work.rows)
    else:
        report.retried += len(work.rows)
    log.info("hl7v2.patient_failed", facility_id=facility_id, reason=exc.reason, rows=len(work.rows))


def process_facility(
    sessions: sessionmaker[Session],
    client_for: Callable[[Facility], EHRClient],
    facility_id: str,
    settings: Settings,
    *,
    references: ReferenceCache | None = None,
    patients: int = 20,
    rounds: int = 50,
) -> AdtReport:
    """Claim and process rounds of patients until none is due (or ``rounds`` ran: the caller re-enqueues).
    Each claim commits before any EHR read, so no transaction waits on the EHR."""
    total = AdtReport()
    for _ in range(rounds):
        with sessions.begin() as session:
            facility = session.get(Facility, facility_id)
            if facility is None or not facility.hl7v2:
                return total
            parsed = parse_fields(session, facility)
            claimed = claim(session, facility_id, patients=patients, lease=settings.lease_max_hold)
            session.expunge(facility)
        total.parsed += parsed
        if not claimed.patients:
            if parsed:
                continue  # more rows may wait for their parse
            return total
        client = client_for(facility)
        with sessions.begin() as session:
            session.add(facility)
            report = process_claimed(session, facility, client, claimed, settings, references=references)
        for name in _REPORT_FIELDS[:-1]:
            setattr(total, name, getattr(total, name) + getattr(report, name))
    return total


def due_facilities(session: Session) -> list[str]:
    return sorted(session.execute(FACILITIES_WITH_DUE_ADT).scalars().all())


def describe(report: AdtReport) -> dict[str, Any]:
    return {k: getattr(report, k) for k in _REPORT_FIELDS}

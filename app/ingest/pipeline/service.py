"""The pipeline's use case: ``Pipeline.fetch`` (EHR reads, no database) then ``Pipeline.store`` (one
version-guarded write, caller commits), then ``Pipeline.committed`` once the caller's transaction is in.

Fetching and storing are separate steps so that a caller holds no transaction open while it waits on an
EHR, and so that a store that fails can be retried in smaller pieces without reading the EHR again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session

from app.db.models import DELETION_NOT_FOUND, Facility
from app.ehr.client import EHRClient
from app.errors import IngestError
from app.fhir.references import ResourceRef
from app.ingest.blood_pressure import refresh_readings
from app.ingest.pipeline.fetch import fetch_resources, search_identifier
from app.ingest.pipeline.normalize import normalize
from app.ingest.pipeline.observed import Observed, Outcome
from app.ingest.pipeline.references import ReferenceCache
from app.ingest.pipeline.store import StoreStats, store_versions
from app.settings import Settings
from app.vendors.base import VendorAdapter
from app.vendors.registry import adapter_for

log = structlog.get_logger("ingest.pipeline")

#: An identifier-only focus: (resource type, ``system|value``).
IdentifierKey = tuple[str, str]


@dataclass(frozen=True)
class Work:
    """What a source asks the pipeline to ingest for one facility."""

    reads: Sequence[ResourceRef] = ()
    identifiers: Sequence[IdentifierKey] = ()
    payloads: Sequence[Observed] = ()  # full resources already in hand (a full-resource notification)


@dataclass
class Fetched:
    """Every item of a ``Work``, fetched and normalized; failures are values, never raised."""

    reads: dict[ResourceRef, Outcome] = field(default_factory=dict)
    identifiers: dict[IdentifierKey, list[Observed] | IngestError] = field(default_factory=dict)
    payloads: list[Observed] = field(default_factory=list)  # in the order of ``Work.payloads``
    references: list[Observed] = field(default_factory=list)  # resources the others need (Medications)
    unresolved: dict[str, int] = field(default_factory=dict)  # references that could not be read, by reason

    def observed(self) -> list[Observed]:
        """Everything there is to store."""
        found = [o for o in self.reads.values() if isinstance(o, Observed)]
        found += [o for r in self.identifiers.values() if isinstance(r, list) for o in r]
        return found + self.payloads + self.references


class Pipeline:
    """One facility's pipeline: its EHR client, its vendor adapter (built once by the caller) and the
    process's reference cache."""

    def __init__(
        self,
        client: EHRClient,
        adapter: VendorAdapter,
        references: ReferenceCache,
        *,
        concurrency: int,
    ) -> None:
        self.client = client
        self.adapter = adapter
        self.references = references
        self.concurrency = concurrency

    @classmethod
    def for_facility(
        cls,
        facility: Facility,
        client: EHRClient,
        settings: Settings,
        references: ReferenceCache | None = None,
    ) -> Pipeline:
        """The facility's pipeline, as every source builds it (the drain, the reconciler, HL7 v2): its
        vendor's adapter built once, the process's reference cache (a fresh one when not given)."""
        adapter = adapter_for(facility.vendor, mrn_system=facility.mrn_system)
        cache = references if references is not None else ReferenceCache()  # an empty cache is falsy
        return cls(client, adapter, cache, concurrency=settings.fetch_concurrency)

    @property
    def facility_id(self) -> str:
        return self.client.facility_id

    def fetch(self, work: Work, *, now: datetime | None = None) -> Fetched:
        """Read, resolve and normalize ``work``; then fetch what it references and this process has not
        stored yet. A reference that cannot be read does not hold back the resource that names it: the
        consumer view shows it as unresolved until it arrives."""
        now = now or datetime.now(UTC)
        fetched = Fetched()
        reads = fetch_resources(self.client, self.adapter, list(work.reads), workers=self.concurrency)
        wanted: list[ResourceRef] = []
        for ref, outcome in reads.items():
            if isinstance(outcome, Observed):
                [normalized], more = normalize(self.adapter, [outcome], now=now)
                fetched.reads[ref] = normalized
                wanted += more
            else:
                fetched.reads[ref] = outcome
        for resource_type, identifier in dict.fromkeys(work.identifiers):
            found = search_identifier(self.client, self.adapter, resource_type, identifier)
            if isinstance(found, list):
                found, more = normalize(self.adapter, found, now=now)
                wanted += more
            fetched.identifiers[(resource_type, identifier)] = found
        fetched.payloads, more = normalize(self.adapter, list(work.payloads), now=now)
        wanted += more
        self._fetch_references(fetched, wanted, now=now)
        return fetched

    def _fetch_references(self, fetched: Fetched, wanted: list[ResourceRef], *, now: datetime) -> None:
        present = {ResourceRef(o.resource_type, o.resource_id) for o in fetched.observed()}
        missing = self.references.unseen(self.facility_id, (ref for ref in wanted if ref not in present))
        if not missing:
            return
        outcomes = fetch_resources(self.client, self.adapter, missing, workers=self.concurrency)
        extra: list[Observed] = []
        for ref, outcome in outcomes.items():
            if isinstance(outcome, Observed) and outcome.deletion != DELETION_NOT_FOUND:
                extra.append(outcome)
                continue
            # A 404 is not yet a deletion (no row here to read it again later): unresolved, not a tombstone.
            reason = outcome.reason if isinstance(outcome, IngestError) else "not_found"
            key = f"reference_{reason}"
            fetched.unresolved[key] = fetched.unresolved.get(key, 0) + 1
            log.info(
                "ingest.reference_unresolved",
                facility_id=self.facility_id,
                resource_type=ref.resource_type,
                reason=reason,
            )
        fetched.references, _ = normalize(self.adapter, extra, now=now)

    def store(self, session: Session, items: list[Observed]) -> StoreStats:
        """The one write path; the caller commits. Blood-pressure readings are re-paired in the same
        transaction, by this vendor's pairing, for every subject the write touched."""
        stats = store_versions(session, items)
        written = [(o.facility_id, o.resource_type, o.resource_id) for o in items]
        refresh_readings(session, written, self.adapter.pair_blood_pressure)
        return stats

    def committed(self, fetched: Fetched) -> None:
        """Remember the referenced resources once they are committed."""
        self.references.remember(
            self.facility_id, (ResourceRef(o.resource_type, o.resource_id) for o in fetched.references)
        )

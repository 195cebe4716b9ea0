"""The fetch stage: reading what a batch points at, the way the facility's vendor allows.

- Where the adapter allows it, ids of one type are read with one search (``Type?_id=a,b,c``); an id the
  search does not return is read on its own, so that a 404/410 is told (``Observed.deletion``: ``gone``
  for a 410, ``not_found`` for a 404, which the caller confirms before it is a deletion) and anything
  else is an error for that row alone. A server refusing the batched search falls back to single reads.
- Single reads run concurrently on a small thread pool (httpx clients are thread-safe); the facility's
  shared politeness limits still apply to every request.
- An identifier-only focus (``system|value``) is resolved by a search; nothing found yet is transient.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import structlog

from app.db.models import DELETION_GONE, DELETION_NOT_FOUND
from app.ehr.client import EHRClient
from app.errors import IdentifierNotFound, IngestError, PermanentEHRError
from app.fhir.references import ResourceRef
from app.ingest.pipeline.observed import Observed, Outcome
from app.vendors.base import VendorAdapter

log = structlog.get_logger("ingest.fetch")


def fetch_resources(
    client: EHRClient, adapter: VendorAdapter, refs: list[ResourceRef], *, workers: int
) -> dict[ResourceRef, Outcome]:
    outcomes: dict[ResourceRef, Outcome] = {}
    singles: list[ResourceRef] = []
    if adapter.supports_batch_read():
        by_type: dict[str, list[ResourceRef]] = {}
        for ref in refs:
            by_type.setdefault(ref.resource_type, []).append(ref)
        for resource_type, typed in by_type.items():
            size = max(1, adapter.batch_read_max())
            for start in range(0, len(typed), size):
                chunk = typed[start : start + size]
                found = _search_ids(client, adapter, resource_type, chunk) if len(chunk) > 1 else {}
                outcomes.update(found)
                singles.extend(ref for ref in chunk if ref not in found)
    else:
        singles = list(refs)
    outcomes.update(_read_each(client, singles, workers))
    return outcomes


def _search_ids(
    client: EHRClient, adapter: VendorAdapter, resource_type: str, refs: list[ResourceRef]
) -> dict[ResourceRef, Outcome]:
    wanted = {ref.resource_id: ref for ref in refs}
    params = {"_id": ",".join(wanted), "_count": str(len(wanted))}
    try:
        bundles = client.search(resource_type, params)
    except PermanentEHRError as exc:
        log.info(
            "ingest.batch_read_refused",
            facility_id=client.facility_id,
            reason=exc.reason,
            resource_type=resource_type,
        )
        return {}
    except IngestError:
        return {}  # transient: the single reads retry and back off for each row on their own
    fetched_at = datetime.now(UTC)
    found: dict[ResourceRef, Outcome] = {}
    for bundle in bundles:
        for resource in adapter.search_entries(bundle):
            ref = wanted.get(str(resource.get("id")))
            if ref is not None and resource.get("resourceType") == resource_type:
                found[ref] = Observed(
                    client.facility_id, resource_type, ref.resource_id, resource, fetched_at
                )
    return found


def _read_each(client: EHRClient, refs: list[ResourceRef], workers: int) -> dict[ResourceRef, Outcome]:
    def one(ref: ResourceRef) -> Outcome:
        try:
            result = client.read(ref)
        except IngestError as exc:
            return exc
        deletion = None
        if result.resource is None:
            deletion = DELETION_GONE if result.status == 410 else DELETION_NOT_FOUND
        return Observed(
            client.facility_id,
            ref.resource_type,
            ref.resource_id,
            result.resource,
            result.fetched_at,
            deletion=deletion,
        )

    if len(refs) <= 1 or workers <= 1:
        return {ref: one(ref) for ref in refs}
    with ThreadPoolExecutor(max_workers=min(workers, len(refs)), thread_name_prefix="fetch") as pool:
        return dict(zip(refs, pool.map(one, refs), strict=True))


def search_identifier(
    client: EHRClient, adapter: VendorAdapter, resource_type: str, identifier: str
) -> list[Observed] | IngestError:
    """Resolve an identifier-only focus by search. Nothing found may be an index not yet updated: a
    transient error, so the caller backs off and, if it never resolves, the failure ends visible."""
    try:
        bundles = client.search(resource_type, {"identifier": identifier})
    except IngestError as exc:
        return exc
    fetched_at = datetime.now(UTC)
    found = [
        Observed(client.facility_id, resource_type, str(resource["id"]), resource, fetched_at)
        for bundle in bundles
        for resource in adapter.search_entries(bundle)
        if resource.get("resourceType") == resource_type and isinstance(resource.get("id"), str)
    ]
    if not found:
        return IdentifierNotFound(f"no {resource_type} with the focus identifier yet")
    return found

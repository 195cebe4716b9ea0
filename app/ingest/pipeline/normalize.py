"""The normalization stage: the vendor adapter's pure summary and validation, and what it references."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from app.fhir.references import ResourceRef
from app.ingest.pipeline.observed import Observed
from app.vendors.base import VendorAdapter


def normalize(
    adapter: VendorAdapter, observed: list[Observed], *, now: datetime
) -> tuple[list[Observed], list[ResourceRef]]:
    """Attach the adapter's summary and validation issues; return the references still to fetch."""
    out: list[Observed] = []
    wanted: list[ResourceRef] = []
    for item in observed:
        if item.resource is None:
            out.append(item)
            continue
        result = adapter.normalize(item.resource, now=now)
        out.append(replace(item, summary=result.summary, issues=result.issues))
        wanted.extend(ResourceRef(t, i) for t, i in result.references)
    return out, wanted

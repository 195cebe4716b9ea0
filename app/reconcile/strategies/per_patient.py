"""What the per-patient strategies (``patient_last_updated``, ``created_date``) share. Both re-crawl the
cohort periodically, comparing content, which also catches the edits a ``_lastUpdated`` ignores
(Oracle's minor edits) and finds deletions.

Types with no patient to scope them by (Patient itself) are crawled whole: that is also how a facility
that sends nothing tells us about new patients. Where Patients cannot be listed whole (Epic: a Patient
search needs criteria and is refused past 100 matches, 4127), they are searched by birth-date ranges,
each range halved while the server says it matches too much, and the known patients no range listed
(none has a birth date, or one vanished) are read by id: never a search that loses the rest.

The watermark becomes the run's start only once every patient's pages are committed (a run stopped
half-way restarts from the old one)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

from app.errors import SearchTooBroad
from app.fhir.references import ResourceRef
from app.reconcile.strategies.base import Page, Scope, crawl, entries


def whole_type(scope: Scope) -> Iterator[Page]:
    stored = scope.stored_ids(scope.resource_type, None)
    if scope.resource_type == "Patient" and not scope.facts.patients_listable:
        yield from patients_by_birthdate(scope, stored)
        return
    params = {"_count": str(scope.facts.page_size)}
    yield from crawl(scope, params, stored, high_water=scope.started_at)


#: The birth-date ranges start here (and end tomorrow): wider than any living patient's.
EARLIEST_BIRTH = date(1850, 1, 1)


def patients_by_birthdate(scope: Scope, stored: set[str]) -> Iterator[Page]:
    """Patients searched by ``birthdate=ge{lo}&birthdate=lt{hi}``, a range split in two while the server
    refuses it as matching too much (``SearchTooBroad``), down to one day (then the refusal stops the
    type's run: more patients born on one day than the server lists). Then every patient of the cohort
    or stored that no range listed is read (404/410 → tombstone)."""
    seen: set[str] = set()
    known = stored | set(scope.cohort())  # read before the searches: one created meanwhile is not "vanished"
    ranges = [(EARLIEST_BIRTH, scope.started_at.date() + timedelta(days=2))]
    while ranges:
        lo, hi = ranges.pop()
        params: dict[str, str | list[str]] = {
            "birthdate": [f"ge{lo.isoformat()}", f"lt{hi.isoformat()}"],
            "_count": str(scope.facts.page_size),
        }
        try:
            for bundle in scope.client.search_pages("Patient", params):
                found = entries(scope, bundle)
                seen.update(str(r["id"]) for r in found)
                yield Page(found=found, high_water=scope.started_at)
        except SearchTooBroad:
            if hi - lo <= timedelta(days=1):
                raise
            middle = lo + (hi - lo) / 2
            ranges += [(middle, hi), (lo, middle)]  # the earlier half next
    unlisted = sorted(known - seen)
    size = scope.facts.page_size
    for start in range(0, len(unlisted), size):
        chunk = unlisted[start : start + size]
        yield Page(reads=[ResourceRef("Patient", i) for i in chunk], high_water=scope.started_at)
    yield Page(high_water=scope.started_at, recrawled=True)


def search(scope: Scope, params: dict[str, str]) -> Iterator[Page]:
    for bundle in scope.client.search_pages(scope.resource_type, params):
        yield Page(found=entries(scope, bundle), high_water=scope.started_at)


def per_patient(scope: Scope, changes: dict[str, str] | None) -> Iterator[Page]:
    """Per patient: the change search (``changes`` parameters), or a crawl when a re-crawl is due or
    nothing narrower can be asked (no watermark yet, no parameter for this type)."""
    facts = scope.facts
    patients = scope.cohort()
    for index, patient in enumerate(patients):
        params = {"patient": patient, "_count": str(facts.page_size)}
        last = index == len(patients) - 1
        if scope.recrawl or changes is None:
            stored = scope.stored_ids(scope.resource_type, patient)
            for page in crawl(scope, params, stored, high_water=scope.started_at):
                yield Page(page.found, page.reads, page.high_water, recrawled=page.recrawled and last)
        else:
            yield from search(scope, {**params, **changes})
    if not patients:
        yield Page(high_water=scope.started_at, recrawled=scope.recrawl)

"""What the per-patient strategies (``patient_last_updated``, ``created_date``) share. Both re-crawl the
cohort periodically, comparing content, which also catches the edits a ``_lastUpdated`` ignores
(Oracle's minor edits) and finds deletions.

Types with no patient to scope them by (Patient itself) are crawled whole: that is also how a facility
that sends nothing tells us about new patients. The watermark becomes the run's start only once every
patient's pages are committed (a run stopped half-way restarts from the old one)."""

from __future__ import annotations

from collections.abc import Iterator

from app.reconcile.strategies.base import Page, Scope, crawl, entries


def whole_type(scope: Scope) -> Iterator[Page]:
    stored = scope.stored_ids(scope.resource_type, None)
    params = {"_count": str(scope.facts.page_size)}
    yield from crawl(scope, params, stored, high_water=scope.started_at)


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

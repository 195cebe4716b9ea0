"""``last-updated``: ``{type}?_lastUpdated=gt{watermark - overlap}&_sort=_lastUpdated`` system-wide
(HAPI, Medplum, generic servers). Sorted ascending, so a run stopped between two pages may keep what
it committed: the watermark moves to the latest ``meta.lastUpdated`` seen. Deletions never appear in a
``_lastUpdated`` search: the periodic re-crawl finds them."""

from __future__ import annotations

from collections.abc import Iterator

from app.reconcile import StrategyName
from app.reconcile.strategies.base import (
    Page,
    Scope,
    crawl,
    entries,
    last_updated_of,
    last_updated_value,
    later,
)


class LastUpdated:
    name: StrategyName = "last-updated"

    def pages(self, scope: Scope) -> Iterator[Page]:
        facts = scope.facts
        stored = scope.stored_ids(scope.resource_type, None) if scope.recrawl else set()
        params = {"_count": str(facts.page_size)}
        if scope.since is not None:
            params[facts.last_updated_param] = last_updated_value(facts, scope.since)
        if facts.sort_last_updated:
            params["_sort"] = "_lastUpdated"
        high = scope.watermark
        for bundle in scope.client.search_pages(scope.resource_type, params):
            found = entries(scope, bundle)
            for resource in found:
                high = later(high, last_updated_of(resource))
            yield Page(found=found, high_water=high, resumable=facts.sort_last_updated)
        if scope.recrawl:
            crawl_params = {"_count": str(facts.page_size)}
            for page in crawl(scope, crawl_params, stored, high_water=high):
                yield Page(page.found, page.reads, high, resumable=True, recrawled=page.recrawled)

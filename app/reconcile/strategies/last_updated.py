"""``last-updated``: ``{type}?_lastUpdated=gt{watermark - overlap}&_sort=_lastUpdated`` system-wide
(HAPI, Medplum, generic servers). Sorted ascending, so a run stopped between two pages may keep what
it committed: the watermark moves to the latest ``meta.lastUpdated`` seen.

Deletions never appear in a ``_lastUpdated`` search. Where the facility's probed capabilities list
type-level ``_history`` for the type (``Scope.history``) and no re-crawl is due (one reads every stored
id it no longer lists anyway), the run first pages ``{type}/_history?_since={watermark - overlap}`` and
reads each stored live resource a ``DELETE`` entry names (404/410 → tombstone; a live answer, deleted
then created again, → stored as it is now). The history is newest first, so a run stopped inside it
keeps its watermark; once it is read, the search's watermark may move no later than the newest instant
the history vouched for (its first page's ``Bundle.meta.lastUpdated``, else its newest entry's time):
a deletion it did not list (made after it was read) is then still after the next run's ``_since``. A
history that vouches for no instant (no bundle time, entries without times) bounds nothing: the overlap
covers the seconds between it and the search. The history never holds the change search back: one
longer than ``MAX_HISTORY_PAGES`` (a window days wide), one that fails (refused though advertised, a
server error after the retries, an unreadable page) or one still paging when half the run's time
budget is gone is left there (logged): the deletions it did not reach wait for the re-crawl. Elsewhere
the periodic re-crawl finds deletions.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from app.ehr.client import next_link
from app.errors import IngestError
from app.fhir.references import ResourceRef
from app.fhir.resources import parse_instant
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

log = structlog.get_logger("reconcile")

#: The most ``_history`` pages one run reads: past them the rest of the window's deletions wait for the
#: re-crawl, so that a wide window cannot hold a type's change search back run after run.
MAX_HISTORY_PAGES = 50

#: A FHIR id (``[A-Za-z0-9\-\.]{1,64}``) after its type, as the last segments of a URL, a version
#: (``/_history/{v}``: HAPI names deleted versions so) allowed after it.
_ID = r"([A-Za-z0-9\-.]{1,64})(?:/_history/[^/?#]+)?/?(?:[?#].*)?"


class LastUpdated:
    name: StrategyName = "last-updated"

    def pages(self, scope: Scope) -> Iterator[Page]:
        facts = scope.facts
        stored = scope.stored_ids(scope.resource_type, None) if scope.recrawl else set()
        wanted = scope.history and scope.since is not None and not scope.recrawl
        history = _History(scope) if wanted else None
        if history is not None:
            yield from history.pages()
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
            mark = history.bound(high) if history is not None else high
            yield Page(found=found, high_water=mark, resumable=facts.sort_last_updated)
        mark = history.bound(high) if history is not None else high
        if scope.recrawl:
            crawl_params = {"_count": str(facts.page_size)}
            for page in crawl(scope, crawl_params, stored, high_water=mark):
                yield Page(page.found, page.reads, mark, resumable=True, recrawled=page.recrawled)


@dataclass
class _History:
    """One run's ``_history`` traversal: the deletions it names, and the newest instant it vouched for."""

    scope: Scope
    #: The latest instant the history vouched for: its first page's ``Bundle.meta.lastUpdated`` and the
    #: change times its entries carried (``meta.lastUpdated``, ``response.lastModified``).
    newest: datetime | None = None

    def pages(self) -> Iterator[Page]:
        """One page per history page: reads of the stored live resources its ``DELETE`` entries name,
        each id once. The watermark stays (``high_water`` None, not resumable): the history is newest
        first, so what a stop leaves unread may be older than anything committed. A failure of any kind
        (after the client's retries) ends it, logged: the change search runs all the same."""
        scope = self.scope
        assert scope.since is not None  # checked by the caller
        params = {"_since": _instant(scope.since), "_count": str(scope.facts.page_size)}
        try:
            yield from self._pages(params)
        except IngestError as exc:
            log.info(
                "reconcile.history_left",
                facility_id=scope.client.facility_id,
                resource_type=scope.resource_type,
                reason=exc.reason,
            )

    def _pages(self, params: dict[str, str]) -> Iterator[Page]:
        scope = self.scope
        pattern = re.compile(rf"(?:^|/){re.escape(scope.resource_type)}/{_ID}$")
        asked: set[str] = set()
        # Half of what is left of the run's budget at most: the change search must still run.
        now = time.monotonic()
        give_up = now + (scope.deadline - now) / 2 if scope.deadline is not None else None
        for n, bundle in enumerate(scope.client.history_pages(scope.resource_type, params), start=1):
            if n == 1:
                self.newest = later(self.newest, _bundle_time(bundle))
            gone: list[str] = []
            listed = bundle.get("entry")
            for entry in listed if isinstance(listed, list) else []:
                if not isinstance(entry, dict):
                    continue
                self.newest = later(self.newest, _changed_at(entry))
                deleted = _deleted_id(entry, pattern)
                if deleted is not None and deleted not in asked:
                    gone.append(deleted)
                    asked.add(deleted)
            yield Page(reads=[ResourceRef(scope.resource_type, i) for i in sorted(self._live(gone))])
            more = next_link(bundle) is not None
            out_of_time = give_up is not None and time.monotonic() > give_up
            if more and (n == MAX_HISTORY_PAGES or out_of_time):
                log.info(
                    "reconcile.history_left",
                    facility_id=scope.client.facility_id,
                    resource_type=scope.resource_type,
                    reason="out_of_time" if out_of_time else "too_long",
                    pages=n,
                )
                return

    def _live(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are stored live (only those are read)."""
        if not ids:
            return set()
        scope = self.scope
        if scope.live_ids is not None:
            return scope.live_ids(scope.resource_type, ids)
        return set(ids) & scope.stored_ids(scope.resource_type, None)

    def bound(self, high: datetime | None) -> datetime | None:
        """``high`` no later than the newest instant the history vouched for (never below the
        watermark): every deletion up to there was listed, a later one is inside the next run's
        ``_since``. A history that vouched for no instant bounds nothing."""
        if self.newest is None:
            return high
        limit = later(self.scope.watermark, self.newest)
        if high is None or limit is None:
            return None
        return min(high, limit)


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bundle_time(bundle: dict[str, Any]) -> datetime | None:
    """When the server generated the history (``Bundle.meta.lastUpdated``, as HAPI sets it)."""
    meta = bundle.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return parse_instant(value)
    return None


def _changed_at(entry: dict[str, Any]) -> datetime | None:
    resource = entry.get("resource")
    at = last_updated_of(resource) if isinstance(resource, dict) else None
    response = entry.get("response")
    modified = response.get("lastModified") if isinstance(response, dict) else None
    if isinstance(modified, str):
        with contextlib.suppress(ValueError):  # an unreadable time only means "no bound from this one"
            at = later(at, parse_instant(modified))
    return at


def _deleted_id(entry: dict[str, Any], pattern: re.Pattern[str]) -> str | None:
    """The id a history entry says was deleted (``request.method`` DELETE, or a ``410`` response, with
    no resource), from ``request.url`` or else ``fullUrl``; None for any other entry."""
    if entry.get("resource"):  # an empty object is no resource either
        return None
    request, response = entry.get("request"), entry.get("response")
    request = request if isinstance(request, dict) else {}
    response = response if isinstance(response, dict) else {}
    method, status = request.get("method"), response.get("status")
    gone = isinstance(status, (str, int)) and not isinstance(status, bool) and str(status).startswith("410")
    if method != "DELETE" and not gone:
        return None
    for url in (request.get("url"), entry.get("fullUrl")):
        if isinstance(url, str) and (match := pattern.search(url)) is not None:
            return match.group(1)
    return None

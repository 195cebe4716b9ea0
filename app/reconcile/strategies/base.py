"""The interface every change-detection strategy implements, and the pieces they share.

A strategy turns one facility's resource type and watermark into pages of what it found: resources a
search returned, references to read (a stored resource that vanished from a re-crawl), and the
high-water mark the watermark may move to once every page up to this one is committed. Strategies only
read from the EHR (through the facility's client); the engine (``app.reconcile.service``) stores every
page through the one pipeline and owns the watermark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from app.ehr.bulk import LineQuarantine
from app.ehr.client import EHRClient
from app.fhir.references import ResourceRef
from app.fhir.resources import resource_meta
from app.reconcile import StrategyName
from app.reconcile.facts import SearchFacts
from app.settings import Settings
from app.vendors.base import VendorAdapter


@dataclass(frozen=True)
class Page:
    """One committed step of a strategy's run."""

    found: list[dict[str, Any]] = field(default_factory=list)  # resources a search returned
    reads: list[ResourceRef] = field(default_factory=list)  # stored resources a re-crawl no longer lists
    #: The watermark, should the run end after this page (None: leave it where it is).
    high_water: datetime | None = None
    #: Whether stopping after this page (a time budget) may move the watermark to ``high_water``: true
    #: only where every change at or before it was on this page or an earlier one (a sorted search).
    resumable: bool = False
    #: Whether a re-crawl this run completed with this page.
    recrawled: bool = False
    #: The strategy stopped at the run's time budget (``Scope.deadline``) with work left for the next
    #: run (a bulk job still running): the engine ends the type's run as partial.
    out_of_time: bool = False
    #: Told once the page is committed (a bulk job's position is saved only then).
    committed: Callable[[], None] | None = None


@dataclass(frozen=True)
class KeptJob:
    """A facility's bulk export job a run left running, as ``reconcile_bulk_jobs`` keeps it."""

    resource_type: str
    level: str
    group_id: str | None
    since: datetime | None  # None: a full export
    status_url: str
    kicked_off_at: datetime
    file_index: int = 0  # every file before this one is committed ...
    line: int = 0  # ... and the first ``line`` lines of this one
    poll_after: datetime | None = None  # not polled before (the server's Retry-After)


class BulkJobs(Protocol):
    """Where a facility's one kept bulk job lives between runs (``app.reconcile.bulk_jobs``)."""

    def load(self) -> KeptJob | None: ...
    def save(self, job: KeptJob) -> None: ...
    def defer(self, poll_after: datetime) -> None:
        """The kept job is not to be polled before then."""
        ...

    def advance(self, file_index: int, line: int, seen: list[str]) -> None:
        """The position committed pages reached, and the ids they listed (a full export's), at once."""
        ...

    def seen(self) -> set[str]:
        """The ids ``advance`` was given since the job was saved."""
        ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class Scope:
    """What one strategy run of one resource type is given."""

    client: EHRClient
    adapter: VendorAdapter
    resource_type: str
    watermark: datetime | None  # what the last complete run committed (None: never ran)
    since: datetime | None  # watermark minus overlap: the lower bound of change searches (None: all)
    started_at: datetime  # our clock when the run began
    recrawl: bool  # a full re-crawl is due (compare content, find what vanished)
    cohort: Callable[[], list[str]]  # the facility's patient ids
    stored_ids: Callable[[str, str | None], set[str]]  # live stored ids of a type (of one patient)
    #: What a bulk export needs beyond the client: the settings (its caps and timeouts, the Redis lease;
    #: None: ``get_settings()``), where unparseable ndjson lines go (None: the quarantine table of
    #: ``settings.database_url``), and the Group the facility's YAML names as its cohort (None: the
    #: patient-level export).
    settings: Settings | None = None
    quarantine: LineQuarantine | None = None
    export_group: str | None = None
    #: The run's time budget as a ``time.monotonic()`` instant (None: none): a bulk job not complete by
    #: then is kept for the next run.
    deadline: float | None = None
    #: Where a bulk job a run leaves running is kept for the next (None: nowhere; it is cancelled).
    bulk_jobs: BulkJobs | None = None
    #: Whether the facility's probed capabilities list type-level ``_history`` for this type
    #: (``TypePlan.history``): where they do, ``last-updated`` pages it for deletions.
    history: bool = False
    #: Which of some ids of a type are stored live (None: ``stored_ids`` of the whole type, filtered):
    #: what a ``_history`` page's deletions are checked against, without loading every id of the type.
    live_ids: Callable[[str, list[str]], set[str]] | None = None

    @property
    def facts(self) -> SearchFacts:
        return self.adapter.search_facts


class Strategy(Protocol):
    @property
    def name(self) -> StrategyName: ...

    def pages(self, scope: Scope) -> Iterator[Page]:
        """The pages of one run. Raises an ``IngestError`` when a search fails after the client's
        retries (the engine then stops this type's run and keeps its watermark)."""
        ...


def entries(scope: Scope, bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of the wanted type on a search page (outcome entries and strangers left out)."""
    return [
        r
        for r in scope.adapter.search_entries(bundle)
        if r.get("resourceType") == scope.resource_type and isinstance(r.get("id"), str)
    ]


def last_updated_of(resource: dict[str, Any]) -> datetime | None:
    try:
        return resource_meta(resource).last_updated
    except Exception:  # noqa: BLE001 - an unreadable meta only means "no high-water mark from this one"
        return None


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def last_updated_value(facts: SearchFacts, since: datetime) -> str:
    """``gt{since}`` as this server accepts it: an instant in UTC, or a date where only days are kept
    (the overlap of at least a day then still covers the watermark)."""
    since = since.astimezone(UTC)
    if facts.last_updated_day_precision:
        return f"gt{since.date().isoformat()}"
    return "gt" + since.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def date_value(since: datetime) -> str:
    return "ge" + since.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def crawl(
    scope: Scope, params: dict[str, str], stored: set[str], *, high_water: datetime | None
) -> Iterator[Page]:
    """A full search (``params`` without a date filter) whose results are compared by content when
    stored (the version guard tells unchanged from changed); then each stored live id the search no
    longer lists is read (404/410 → tombstone, a live answer → stored). ``stored`` is read before the
    search starts, so a resource created meanwhile is never taken for vanished."""
    seen: set[str] = set()
    for bundle in scope.client.search_pages(scope.resource_type, params):
        found = entries(scope, bundle)
        seen.update(str(r["id"]) for r in found)
        yield Page(found=found, high_water=high_water)
    vanished = sorted(stored - seen)
    yield Page(
        reads=[ResourceRef(scope.resource_type, i) for i in vanished], high_water=high_water, recrawled=True
    )


def overlap_floor(facts: SearchFacts, overlap: timedelta) -> timedelta:
    return max(overlap, facts.min_overlap)

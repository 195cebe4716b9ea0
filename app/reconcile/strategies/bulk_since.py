"""``bulk-since``: a Bulk Data export of the type changed since the watermark minus overlap,
``Group/{id}/$export`` when the facility's YAML names its cohort Group (``reconcile.group``), else
``Patient/$export``, with ``_type`` and ``_since`` (MEDITECH, Oracle, generic servers).

The export itself (``app.ehr.bulk.BulkExport``): 202 and ``Content-Location``, polls honouring
``Retry-After`` up to a cap, a kick-off the server refuses while another job of ours runs tried again for
a bounded time, one job per facility (a Redis lease), ndjson streamed line by line, a resource seen twice
given once, an unparseable line quarantined with its file and line number while the file goes on. Here:

- What the files list is committed in pages of ``PAGE_SIZE`` (a resource listed twice at two versions is
  the version guard's to order). The watermark becomes the job's ``transactionTime`` on the last page
  only, once every page before it is committed.
- **One job per facility, kept across runs** (``Scope.bulk_jobs``: ``reconcile_bulk_jobs``). The status
  URL is saved at kick-off. A run whose time budget ends while the job is still running (polls) or midway
  through its files, or that is killed, leaves the job at the server; the next run polls that job again
  instead of a new kick-off and reads its files from the last committed position (the line a page ended
  on may be read twice: the version guard makes that a no-op). A kept job of another type, level, Group
  or a later ``_since`` than this run needs is cancelled and a new one kicked off; one the server no
  longer knows (404/410: expired) is dropped and a new one kicked off at once.
- The manifest's ``deleted`` entries (where the server lists them) of resources we hold live are read:
  404/410 → tombstone, a live answer (deleted, then made again) → stored. Deletions of resources we never
  held are skipped: there is nothing to tombstone.
- A full export (no ``_since``: the first run, or when a re-crawl is due) is compared with what is stored:
  each live id it no longer lists is read. That is how deletions are found where the server lists none.
  The ids its committed pages listed are kept with the job (``BulkJobs.advance``), so one read over
  several runs is compared whole; what is stored is read when the run that reads it on begins (a
  resource stored since the kick-off is then read once more, never tombstoned unread).
- Giving up (an error, ``bulk_timeout`` since the kick-off) cancels the job at the server (``DELETE``);
  a job read to the end is deleted once its last page is committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from app.ehr.bulk import BulkDeletion, BulkExport, BulkRun, Level
from app.errors import BulkExportBusy, BulkExportGone, BulkExportPending
from app.fhir.references import ResourceRef
from app.reconcile import StrategyName
from app.reconcile.strategies.base import BulkJobs, KeptJob, Page, Scope
from app.settings import get_settings

log = structlog.get_logger("reconcile")

#: Resources (and reads) per committed page.
PAGE_SIZE = 500


class BulkSince:
    name: StrategyName = "bulk-since"

    def pages(self, scope: Scope) -> Iterator[Page]:
        settings = scope.settings or get_settings()
        export = BulkExport(scope.client, settings, quarantine=scope.quarantine)
        level: Level = "group" if scope.export_group else "patient"
        since = None if scope.recrawl or scope.since is None else scope.since
        jobs = scope.bulk_jobs
        kept = jobs.load() if jobs is not None else None
        if kept is not None and not _fits(kept, scope.resource_type, level, scope.export_group, since):
            export.cancel(kept.status_url, why="kept for another export")
            assert jobs is not None
            jobs.clear()
            kept = None
        try:
            yield from _export(scope, export, level, since, kept)
        except BulkExportGone as exc:
            log.info(
                "reconcile.bulk.job_gone",
                facility_id=scope.client.facility_id,
                resource_type=scope.resource_type,
                detail=exc.detail,
            )
            if jobs is not None:
                jobs.clear()
            yield from _export(scope, export, level, since, None)


def _fits(kept: KeptJob, rtype: str, level: str, group: str | None, since: datetime | None) -> bool:
    """Whether the kept job exports what this run needs: the same type and source, from no later."""
    same = (kept.resource_type, kept.level, kept.group_id) == (rtype, level, group)
    return same and (kept.since is None or (since is not None and kept.since <= since))


def _export(
    scope: Scope, export: BulkExport, level: Level, since: datetime | None, kept: KeptJob | None
) -> Iterator[Page]:
    rtype = scope.resource_type
    jobs = scope.bulk_jobs
    if kept is not None:
        since = kept.since  # what the job exports (it fits: from no later than this run needs)
    full = since is None
    # Read before the kick-off (a resumed job: once it is complete, before reading on): whatever is stored
    # later was not there to vanish.
    stored = scope.stored_ids(rtype, None) if full and kept is None else None
    kicked_off_at = datetime.now(UTC)

    def remember(status_url: str) -> None:
        if jobs is not None:
            jobs.save(KeptJob(rtype, level, scope.export_group, since, status_url, kicked_off_at))

    try:
        job = export.run(
            level,
            group_id=scope.export_group,
            since=since,
            types=[rtype],
            resume=kept.status_url if kept is not None else None,
            kicked_off_at=kept.kicked_off_at if kept is not None else None,
            # Without a place to keep it, a job is waited for (up to bulk_timeout), never left behind.
            until=scope.deadline if jobs is not None else None,
            on_kickoff=remember,
            poll_after=_owed(kept),
        )
    except BulkExportPending as exc:
        log.info("reconcile.bulk.pending", facility_id=scope.client.facility_id, resource_type=rtype)
        if jobs is not None and exc.retry_after:
            jobs.defer(datetime.now(UTC) + timedelta(seconds=exc.retry_after))
        yield Page(out_of_time=True)
        return
    except (BulkExportGone, BulkExportBusy):
        raise  # gone: the caller starts afresh; busy (the lease of a run killed midway): kept, tried next run
    except BaseException:
        if jobs is not None:
            jobs.clear()  # run() cancelled it at the server
        raise
    if full and stored is None:
        stored = scope.stored_ids(rtype, None)
    yield from _read(scope, job, kept, stored, level=level)


def _read(
    scope: Scope, job: BulkRun, kept: KeptJob | None, stored: set[str] | None, *, level: str
) -> Iterator[Page]:
    """The job's pages (``_pages``), and what becomes of the job however they end."""
    jobs = scope.bulk_jobs
    done = False

    def finished() -> None:
        nonlocal done
        done = True
        if jobs is not None:
            jobs.clear()

    try:
        yield from _pages(scope, job, kept, stored, level=level, finished=finished)
    except GeneratorExit:
        # The engine stopped after a page (its time budget, or a page it could not store): the job
        # stays for the next run, unless it was read to the end or there is nowhere to keep it.
        job.close(why="run stopped", keep=jobs is not None and not done)
        raise
    except BaseException as exc:
        job.close(why=getattr(exc, "reason", type(exc).__name__))
        if jobs is not None and not isinstance(exc, BulkExportGone):
            jobs.clear()
        raise
    job.close()


def _pages(
    scope: Scope,
    job: BulkRun,
    kept: KeptJob | None,
    stored: set[str] | None,
    *,
    level: str,
    finished: Callable[[], None],
) -> Iterator[Page]:
    """The job's pages from where the kept job's commits got to. ``stored``: a full export's, to compare
    the whole export with (the ids of its earlier runs' pages are the kept job's ``seen``); ``finished``
    is told once the last page is committed."""
    full = stored is not None
    rtype = scope.resource_type
    jobs = scope.bulk_jobs
    seen: set[str] = set()
    live: set[str] | None = None  # stored live ids, read at the first deletion listed
    found: list[dict[str, Any]] = []
    reads: list[ResourceRef] = []
    skipped = 0
    start = (kept.file_index, kept.line) if kept is not None else (0, 0)
    for item in job.items(start):
        if isinstance(item, BulkDeletion):
            if item.ref.resource_type != rtype:
                continue
            if live is None:
                live = scope.stored_ids(rtype, None)
            if item.ref.resource_id in live or item.ref.resource_id in seen:
                reads.append(item.ref)
            else:
                skipped += 1
        elif item.get("resourceType") == rtype:
            found.append(item)
            seen.add(str(item["id"]))
        if len(found) + len(reads) >= PAGE_SIZE:
            listed = [str(r["id"]) for r in found] if full else []
            yield Page(found=found, reads=reads, committed=_advance(jobs, job.completed, listed))
            found, reads = [], []
    if stored is not None and kept is not None and jobs is not None:
        seen |= jobs.seen()  # what the earlier runs' pages of this export listed
    vanished = sorted(stored - seen) if stored is not None else []
    reads.extend(ResourceRef(rtype, i) for i in vanished)
    _log_exported(
        scope, job, level=level, resumed=kept is not None, full=full, skipped=skipped, vanished=len(vanished)
    )
    while len(found) + len(reads) > PAGE_SIZE:
        yield Page(found=found, reads=reads[: PAGE_SIZE - len(found)])
        reads, found = reads[PAGE_SIZE - len(found) :], []
    yield Page(
        found=found,
        reads=reads,
        high_water=job.transaction_time,
        resumable=True,
        recrawled=full,
        committed=finished,
    )


def _log_exported(
    scope: Scope, job: BulkRun, *, level: str, resumed: bool, full: bool, skipped: int, vanished: int
) -> None:
    stats = job.stats
    log.info(
        "reconcile.bulk.exported",
        facility_id=scope.client.facility_id,
        resource_type=scope.resource_type,
        level=level,
        full=full,
        resumed=resumed,
        resources=stats.resources,
        duplicates=stats.duplicates,
        deletions=stats.deletions,
        deletions_unknown=skipped,
        vanished=vanished,
        quarantined=stats.quarantined,
    )


def _owed(kept: KeptJob | None) -> float:
    """Seconds the kept job's server still asks us to wait before polling it again."""
    if kept is None or kept.poll_after is None:
        return 0.0
    return max(0.0, (kept.poll_after - datetime.now(UTC)).total_seconds())


def _advance(
    jobs: BulkJobs | None, position: tuple[int, int], listed: list[str]
) -> Callable[[], None] | None:
    if jobs is None:
        return None
    return lambda: jobs.advance(*position, listed)

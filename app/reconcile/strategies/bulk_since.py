"""``bulk-since``: a Bulk Data export of the type changed since the watermark minus overlap,
``Group/{id}/$export`` when the facility's YAML names its cohort Group (``reconcile.group``), else
``Patient/$export``, with ``_type`` and ``_since`` (MEDITECH, Oracle, generic servers).

The export itself (``app.ehr.bulk.BulkExport``): 202 and ``Content-Location``, polls honouring
``Retry-After`` up to a cap, a kick-off the server refuses while another job of ours runs tried again for
a bounded time, one job per facility (a Redis lease), ndjson streamed line by line, a resource seen twice
given once, an unparseable line quarantined with its file and line number while the file goes on. Here:

- What the files list is committed in pages of ``PAGE_SIZE`` (a resource listed twice at two versions is
  the version guard's to order). The watermark becomes the job's ``transactionTime`` on the last page
  only, once every page before it is committed: a run stopped or killed midway keeps the old watermark
  and exports again from there.
- The manifest's ``deleted`` entries (where the server lists them) of resources we hold live are read:
  404/410 → tombstone, a live answer (deleted, then made again) → stored. Deletions of resources we never
  held are skipped: there is nothing to tombstone.
- A full export (no ``_since``: the first run, or when a re-crawl is due) is compared with what is stored:
  each live id it no longer lists is read. That is how deletions are found where the server lists none.
- Giving up (an error, the run's time budget: the engine closes this generator) leaves the ``with`` of the
  job, which cancels it at the server (``DELETE``) and frees the facility's lease.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog

from app.ehr.bulk import BulkDeletion, BulkExport, Level
from app.fhir.references import ResourceRef
from app.reconcile import StrategyName
from app.reconcile.strategies.base import Page, Scope
from app.settings import get_settings

log = structlog.get_logger("reconcile")

#: Resources (and reads) per committed page.
PAGE_SIZE = 500


class BulkSince:
    name: StrategyName = "bulk-since"

    def pages(self, scope: Scope) -> Iterator[Page]:
        rtype = scope.resource_type
        full = scope.recrawl or scope.since is None
        # Read before the kick-off: whatever is stored later was not there to vanish.
        stored = scope.stored_ids(rtype, None) if full else set()
        settings = scope.settings or get_settings()
        export = BulkExport(scope.client, settings, quarantine=scope.quarantine)
        level: Level = "group" if scope.export_group else "patient"
        seen: set[str] = set()
        live: set[str] | None = None  # stored live ids, read at the first deletion listed
        found: list[dict[str, Any]] = []
        reads: list[ResourceRef] = []
        skipped = 0
        with export.run(
            level, group_id=scope.export_group, since=None if full else scope.since, types=[rtype]
        ) as job:
            for item in job:
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
                    yield Page(found=found, reads=reads)
                    found, reads = [], []
            transaction_time = job.transaction_time
            stats = job.stats
        # The job is read and deleted at the server; what remains is committed with the new watermark.
        vanished = sorted(stored - seen)
        reads.extend(ResourceRef(rtype, i) for i in vanished)
        log.info(
            "reconcile.bulk.exported",
            facility_id=scope.client.facility_id,
            resource_type=rtype,
            level=level,
            full=full,
            resources=stats.resources,
            duplicates=stats.duplicates,
            deletions=stats.deletions,
            deletions_unknown=skipped,
            vanished=len(vanished),
            quarantined=stats.quarantined,
        )
        while len(found) + len(reads) > PAGE_SIZE:
            yield Page(found=found, reads=reads[: PAGE_SIZE - len(found)])
            reads, found = reads[PAGE_SIZE - len(found) :], []
        yield Page(found=found, reads=reads, high_water=transaction_time, resumable=True, recrawled=full)

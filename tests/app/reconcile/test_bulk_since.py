"""The ``bulk-since`` strategy at the network edge (httpx.MockTransport: a Bulk Data server), with the real
Redis lease: what it asks, the pages it gives the engine, and when the job is cancelled."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
import redis

from app.ehr.bulk import RedisExportLock, UnparseableLine
from app.errors import BulkExportBusy, BulkExportFailed
from app.fhir.references import ResourceRef
from app.reconcile.strategies import STRATEGIES
from app.reconcile.strategies.base import KeptJob, Page, Scope
from app.reconcile.strategies.bulk_since import PAGE_SIZE
from app.settings import Settings
from app.vendors import adapter_for
from tests.app.ehr.test_bulk import STATUS, FakeEHR, _ndjson, _resource
from tests.conftest import REDIS_URL
from tests.ehr_mocks import BASE, make_client

SINCE = datetime(2026, 2, 1, tzinfo=UTC)
TRANSACTION_TIME = datetime(2026, 3, 1, 12, tzinfo=UTC)  # FakeEHR's manifest


@pytest.fixture
def settings(redis_prefix: str) -> Settings:
    """The strategy's export sleeps for real: Retry-After is honoured up to 10 ms."""
    wait = timedelta(milliseconds=10)
    return Settings(redis_url=REDIS_URL, redis_prefix=redis_prefix, bulk_retry_after_cap=wait)


def _scope(
    ehr: FakeEHR,
    settings: Settings,
    *,
    stored: set[str] = frozenset(),  # type: ignore[assignment]
    since: datetime | None = SINCE,
    recrawl: bool = False,
    group: str | None = None,
    quarantined: list[UnparseableLine] | None = None,
) -> Scope:
    client = make_client(httpx.MockTransport(ehr), attempts=2)
    sink = quarantined if quarantined is not None else []
    return Scope(
        client=client,
        adapter=adapter_for("meditech"),
        resource_type="Observation",
        watermark=since,
        since=since,
        started_at=datetime.now(UTC),
        recrawl=recrawl,
        cohort=lambda: [],
        stored_ids=lambda rtype, patient: set(stored) if rtype == "Observation" else set(),
        settings=settings,
        quarantine=sink.append,
        export_group=group,
    )


def _deleted(ehr: FakeEHR, *refs: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": ref}} for ref in refs],
    }
    ehr.files[f"{BASE}/files/deleted.ndjson"] = _ndjson(bundle)
    ehr.manifest_extra = {"deleted": [{"type": "Bundle", "url": f"{BASE}/files/deleted.ndjson"}]}


def _run(scope: Scope) -> list[Page]:
    return list(STRATEGIES["bulk-since"].pages(scope))


def _ids(pages: list[Page]) -> list[str]:
    return [str(r["id"]) for p in pages for r in p.found]


def test_changes_since_the_watermark_are_exported_and_the_watermark_is_the_transaction_time_last(
    settings: Settings,
) -> None:
    ehr = FakeEHR()
    ehr.files[f"{BASE}/files/Observation-1.ndjson"] = _ndjson(
        _resource("Observation", "o1"), _resource("Observation", "o2", "3")
    )
    # a second file repeating o2 at the same version (given once) and at a newer one (the guard orders)
    ehr.files[f"{BASE}/files/Observation-2.ndjson"] = _ndjson(
        _resource("Observation", "o2", "3"), _resource("Observation", "o2", "4")
    )
    _deleted(ehr, "Observation/o7", "Observation/never-held", "Condition/c1")
    ehr.polls = [httpx.Response(202, headers={"Retry-After": "600"})]  # Oracle's, capped

    pages = _run(_scope(ehr, settings, stored={"o7", "o8"}))

    kickoff = ehr.requests[0]
    assert kickoff.url.path == "/fhir/Patient/$export"
    assert kickoff.url.params["_type"] == "Observation"
    assert kickoff.url.params["_since"] == "2026-02-01T00:00:00.000Z"
    assert _ids(pages) == ["o1", "o2", "o2"]
    assert [r["meta"]["versionId"] for p in pages for r in p.found] == ["1", "3", "4"]
    # deletions of what we hold are read (a tombstone on 404/410); o8 is not listed: no full export
    assert [ref for p in pages for ref in p.reads] == [ResourceRef("Observation", "o7")]
    assert pages[-1].high_water == TRANSACTION_TIME
    assert pages[-1].resumable
    assert not pages[-1].recrawled
    assert all(p.high_water is None and not p.resumable for p in pages[:-1])
    assert ehr.deleted == [STATUS]  # the job, once read, is deleted at the server


def test_a_group_named_in_the_yaml_is_what_is_exported(settings: Settings) -> None:
    ehr = FakeEHR()
    _run(_scope(ehr, settings, group="g-1"))
    assert ehr.requests[0].url.path == "/fhir/Group/g-1/$export"


def test_a_full_export_when_a_recrawl_is_due_reads_every_stored_id_it_no_longer_lists(
    settings: Settings,
) -> None:
    ehr = FakeEHR()
    ehr.files[f"{BASE}/files/Observation.ndjson"] = _ndjson(
        _resource("Observation", "o1"), _resource("Observation", "o2")
    )

    pages = _run(_scope(ehr, settings, stored={"o1", "o2", "gone-1", "gone-2"}, recrawl=True))

    assert "_since" not in ehr.requests[0].url.params
    assert _ids(pages) == ["o1", "o2"]
    reads = [ref for p in pages for ref in p.reads]
    assert reads == [ResourceRef("Observation", "gone-1"), ResourceRef("Observation", "gone-2")]
    assert pages[-1].recrawled
    assert pages[-1].high_water == TRANSACTION_TIME


def test_a_large_export_is_committed_in_pages_the_watermark_on_the_last_only(settings: Settings) -> None:
    ehr = FakeEHR()
    count = 2 * PAGE_SIZE + 7
    ehr.files[f"{BASE}/files/Observation.ndjson"] = _ndjson(
        *(_resource("Observation", f"o{i}") for i in range(count))
    )
    stored = {f"old{i}" for i in range(PAGE_SIZE)}

    pages = _run(_scope(ehr, settings, stored=stored, since=None))

    assert len(_ids(pages)) == count
    assert all(len(p.found) + len(p.reads) <= PAGE_SIZE for p in pages)
    assert len([ref for p in pages for ref in p.reads]) == PAGE_SIZE  # none listed: each read
    assert [p.high_water for p in pages].count(None) == len(pages) - 1
    assert pages[-1].high_water == TRANSACTION_TIME


def test_a_bad_line_is_quarantined_with_its_line_number_and_the_file_goes_on(settings: Settings) -> None:
    ehr = FakeEHR()
    url = f"{BASE}/files/Observation.ndjson"
    ehr.files[url] = (
        _ndjson(_resource("Observation", "o1"))
        + b'{"resourceType": "Observation", "id": "o2", \n'
        + _ndjson(_resource("Observation", "o3"))
    )
    quarantined: list[UnparseableLine] = []

    pages = _run(_scope(ehr, settings, quarantined=quarantined))

    assert _ids(pages) == ["o1", "o3"]
    assert [(q.path, q.line) for q in quarantined] == [("/fhir/files/Observation.ndjson", 2)]
    assert pages[-1].high_water == TRANSACTION_TIME


def test_giving_up_midway_cancels_the_job_frees_the_lease_and_moves_no_watermark(
    settings: Settings,
) -> None:
    ehr = FakeEHR()
    ehr.files[f"{BASE}/files/Observation.ndjson"] = _ndjson(
        *(_resource("Observation", f"o{i}") for i in range(PAGE_SIZE + 1))
    )
    pages = cast(Generator[Page, None, None], STRATEGIES["bulk-since"].pages(_scope(ehr, settings)))
    first = next(pages)
    assert first.high_water is None
    assert ehr.deleted == []

    pages.close()  # what the engine does at its time budget (the generator is dropped)

    assert ehr.deleted == [STATUS]
    # the facility's one export lease is free again: the next run kicks off at once
    assert _ids(_run(_scope(ehr, settings)))[-1] == f"o{PAGE_SIZE}"


def test_a_failed_job_raises_and_is_cancelled(settings: Settings) -> None:
    outcome: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception"}],
    }
    ehr = FakeEHR(polls=[httpx.Response(500, json=outcome) for _ in range(2)])  # past the client retries
    with pytest.raises(BulkExportFailed):
        _run(_scope(ehr, settings))
    assert ehr.deleted == [STATUS]


class FakeJobs:
    """``BulkJobs`` in memory (the engine's is ``app.reconcile.bulk_jobs.PostgresBulkJobs``)."""

    def __init__(self, kept: KeptJob | None = None) -> None:
        self.kept = kept
        self.listed: set[str] = set()

    def load(self) -> KeptJob | None:
        return self.kept

    def save(self, job: KeptJob) -> None:
        self.kept, self.listed = job, set()

    def defer(self, poll_after: datetime) -> None:
        assert self.kept is not None
        self.kept = dataclasses.replace(self.kept, poll_after=poll_after)

    def advance(self, file_index: int, line: int, seen: list[str]) -> None:
        assert self.kept is not None
        self.kept = dataclasses.replace(self.kept, file_index=file_index, line=line)
        self.listed.update(seen)

    def seen(self) -> set[str]:
        return set(self.listed)

    def clear(self) -> None:
        self.kept, self.listed = None, set()


def _engine(scope: Scope, *, stop_after: int | None = None) -> list[Page]:
    """As the engine does: each page committed, then told; closed after ``stop_after`` pages."""
    pages: list[Page] = []
    generator = cast(Generator[Page, None, None], STRATEGIES["bulk-since"].pages(scope))
    for page in generator:
        pages.append(page)
        if page.committed is not None:
            page.committed()
        if page.out_of_time or len(pages) == stop_after:
            generator.close()
            break
    return pages


def _many(ehr: FakeEHR, n: int) -> None:
    ehr.files[f"{BASE}/files/Observation-1.ndjson"] = _ndjson(
        *(_resource("Observation", f"o{i}") for i in range(n))
    )


def test_a_job_still_running_at_the_deadline_is_kept_with_its_status_url(settings: Settings) -> None:
    ehr = FakeEHR(polls=[httpx.Response(202, headers={"Retry-After": "1"})])
    jobs = FakeJobs()
    scope = dataclasses.replace(_scope(ehr, settings), deadline=time.monotonic(), bulk_jobs=jobs)

    pages = _engine(scope)

    assert [(p.out_of_time, p.found, p.high_water) for p in pages] == [(True, [], None)]
    assert jobs.kept is not None
    assert (jobs.kept.status_url, jobs.kept.resource_type, jobs.kept.since) == (STATUS, "Observation", SINCE)
    assert ehr.deleted == []


def test_a_run_stopped_midway_keeps_the_job_and_the_next_reads_on_from_the_committed_position(
    settings: Settings,
) -> None:
    ehr = FakeEHR()
    _many(ehr, PAGE_SIZE + 10)
    jobs = FakeJobs()
    first = _engine(dataclasses.replace(_scope(ehr, settings), bulk_jobs=jobs), stop_after=1)
    assert len(first[0].found) == PAGE_SIZE
    assert ehr.deleted == []  # kept
    assert jobs.kept is not None
    assert (jobs.kept.file_index, jobs.kept.line) == (0, PAGE_SIZE - 1)  # the line it ended on: again
    kickoffs = sum("$export?" in str(r.url) for r in ehr.requests)

    rest = _engine(dataclasses.replace(_scope(ehr, settings), bulk_jobs=jobs))

    assert sum("$export?" in str(r.url) for r in ehr.requests) == kickoffs  # resumed, no kick-off
    assert _ids(rest) == [f"o{i}" for i in range(PAGE_SIZE - 1, PAGE_SIZE + 10)]
    assert rest[-1].high_water == TRANSACTION_TIME
    assert jobs.kept is None
    assert ehr.deleted == [STATUS]


def test_a_kept_job_for_another_export_is_cancelled_and_a_new_one_kicked_off(settings: Settings) -> None:
    other = f"{BASE}/$export-poll/job-0"
    kept = KeptJob("Condition", "patient", None, SINCE, other, datetime.now(UTC))
    ehr = FakeEHR()
    jobs = FakeJobs(kept)
    _engine(dataclasses.replace(_scope(ehr, settings), bulk_jobs=jobs))
    assert ehr.deleted == [other, STATUS]
    assert any("$export?" in str(r.url) for r in ehr.requests)
    assert jobs.kept is None


def test_a_kept_job_from_a_later_since_does_not_cover_this_run(settings: Settings) -> None:
    later = KeptJob("Observation", "patient", None, SINCE + timedelta(days=1), STATUS, datetime.now(UTC))
    ehr = FakeEHR()
    _engine(dataclasses.replace(_scope(ehr, settings), bulk_jobs=FakeJobs(later)))
    assert ehr.deleted[0] == STATUS  # cancelled, then a new job
    assert ehr.requests[1].url.params["_since"] == "2026-02-01T00:00:00.000Z"


def test_a_full_export_read_over_two_runs_is_compared_whole_with_what_is_stored(settings: Settings) -> None:
    ehr = FakeEHR()
    _many(ehr, PAGE_SIZE + 10)  # o0 … o509
    jobs = FakeJobs()
    # o3 is listed by the first run's page only, o9999 by no page at all: only o9999 vanished
    stored = {"o3", "o9999"}
    first = _engine(
        dataclasses.replace(_scope(ehr, settings, since=None, stored=stored), bulk_jobs=jobs), stop_after=1
    )
    assert not first[-1].recrawled
    assert "o3" in jobs.seen()

    rest = _engine(dataclasses.replace(_scope(ehr, settings, since=None, stored=stored), bulk_jobs=jobs))

    assert [ref for p in rest for ref in p.reads] == [ResourceRef("Observation", "o9999")]
    assert rest[-1].recrawled  # the re-crawl is complete
    assert jobs.kept is None
    assert jobs.seen() == set()


def test_a_kept_job_whose_lease_a_killed_run_still_holds_stays_kept(settings: Settings) -> None:
    kept = KeptJob("Observation", "patient", None, SINCE, STATUS, datetime.now(UTC))
    jobs = FakeJobs(kept)
    ehr = FakeEHR()
    scope = dataclasses.replace(_scope(ehr, settings), bulk_jobs=jobs)
    lease = RedisExportLock(
        redis.Redis.from_url(REDIS_URL), settings.redis_prefix, scope.client.facility_id, 60
    )
    assert lease.acquire()  # as the killed run left it
    with pytest.raises(BulkExportBusy):
        _engine(scope)
    assert jobs.kept == kept
    assert ehr.deleted == []
    lease.release()
    _engine(scope)  # the lease expired: resumed
    assert not any("$export?" in str(r.url) for r in ehr.requests)
    assert jobs.kept is None


def test_a_kept_job_is_not_polled_before_the_retry_after_its_server_asked(settings: Settings) -> None:
    ehr = FakeEHR(polls=[httpx.Response(202, headers={"Retry-After": "1"})])
    jobs = FakeJobs()
    no_time = dataclasses.replace(_scope(ehr, settings), deadline=time.monotonic(), bulk_jobs=jobs)
    _engine(no_time)  # kicked off, polled once: Retry-After 1 s, capped to 10 ms
    assert jobs.kept is not None
    assert jobs.kept.poll_after is not None
    polls = sum("$export-poll" in str(r.url) for r in ehr.requests)
    jobs.kept = dataclasses.replace(jobs.kept, poll_after=datetime.now(UTC) + timedelta(hours=1))

    again = _engine(dataclasses.replace(no_time, deadline=time.monotonic() + 60))

    assert [p.out_of_time for p in again] == [True]  # an hour owed: not polled, not waited for
    assert sum("$export-poll" in str(r.url) for r in ehr.requests) == polls
    jobs.kept = dataclasses.replace(jobs.kept, poll_after=datetime.now(UTC) + timedelta(milliseconds=20))
    done = _engine(dataclasses.replace(no_time, deadline=time.monotonic() + 60))
    assert done[-1].high_water == TRANSACTION_TIME  # waited the 20 ms, then polled: the manifest
    assert jobs.kept is None

"""The Bulk Data client at the network edge (httpx.MockTransport), with the real Redis lease."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis

from app.ehr.bulk import BulkDeletion, BulkExport, RedisExportLock, UnparseableLine, _split_lines
from app.ehr.politeness import Unlimited
from app.errors import (
    BulkExportBusy,
    BulkExportFailed,
    BulkExportGone,
    BulkExportPending,
    BulkExportTimeout,
    ForeignHostError,
)
from app.fhir.references import ResourceRef
from app.settings import Settings
from tests.conftest import REDIS_URL
from tests.ehr_mocks import BASE, TOKEN_URL, make_client

STATUS = f"{BASE}/$export-poll/job-1"


def _resource(rtype: str, rid: str, version: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": rtype,
        "id": rid,
        "meta": {"versionId": version, "lastUpdated": "2026-01-01T00:00:00Z"},
        **extra,
    }


def _ndjson(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


class _Broken(httpx.SyncByteStream):
    """A body that breaks off after ``cut`` bytes (once); the next download is whole."""

    def __init__(self, body: bytes, cut: int) -> None:
        self.body, self.cut = body, cut

    def __iter__(self) -> Iterator[bytes]:
        yield self.body[: self.cut]
        raise httpx.ReadError("connection reset")


@dataclass
class FakeEHR:
    """A Bulk Data server: kick-off answers, then poll answers, then the manifest; files by URL."""

    files: dict[str, bytes] = field(default_factory=dict)
    kickoffs: list[httpx.Response] = field(default_factory=list)
    polls: list[httpx.Response] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    broken_once: dict[str, int] = field(default_factory=dict)  # file URL -> bytes before it breaks off
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        output = [
            {"type": url.rsplit("/", 1)[-1].split(".")[0], "url": url}
            for url in self.files
            if "deleted" not in url and "error" not in url
        ]
        return {
            "transactionTime": "2026-03-01T12:00:00.000Z",
            "request": f"{BASE}/$export",
            "requiresAccessToken": True,
            "output": output,
            "error": [],
            **self.manifest_extra,
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:  # noqa: PLR0911 - one answer per route
        if str(request.url) == TOKEN_URL:
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})
        self.requests.append(request)
        url = str(request.url)
        if request.method == "DELETE":
            self.deleted.append(url)
            return httpx.Response(202)
        if "$export-poll" in url:
            return self.polls.pop(0) if self.polls else httpx.Response(200, json=self.manifest())
        if "$export" in url:
            if self.kickoffs:
                return self.kickoffs.pop(0)
            return httpx.Response(202, headers={"Content-Location": STATUS})
        if url in self.broken_once:
            return httpx.Response(200, stream=_Broken(self.files[url], self.broken_once.pop(url)))
        if url in self.files:
            return httpx.Response(200, content=self.files[url])
        return httpx.Response(404)


@dataclass
class Clock:
    now: float = 0.0
    waits: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def settings(redis_prefix: str) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        bulk_retry_after_cap=timedelta(seconds=30),
        bulk_poll_interval=timedelta(seconds=3),
        bulk_timeout=timedelta(seconds=120),
        bulk_kickoff_wait=timedelta(seconds=60),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


Quarantined = list[UnparseableLine]
MakeExport = Callable[[FakeEHR], tuple[BulkExport, Quarantined]]


@pytest.fixture
def make_export(settings: Settings, clock: Clock) -> MakeExport:
    def make(ehr: FakeEHR) -> tuple[BulkExport, Quarantined]:
        quarantined: Quarantined = []
        client = make_client(httpx.MockTransport(ehr), attempts=2)
        export = BulkExport(client, settings, quarantine=quarantined.append, sleep=clock.sleep, clock=clock)
        return export, quarantined

    return make


def test_an_export_kicks_off_polls_and_streams_every_resource(make_export: MakeExport, clock: Clock) -> None:
    obs = _resource("Observation", "o1", valueQuantity={"value": 1.00})
    ehr = FakeEHR(
        files={
            f"{BASE}/files/Patient.ndjson": _ndjson(_resource("Patient", "p1"), _resource("Patient", "p2"))
        }
    )
    ehr.files[f"{BASE}/files/Observation.ndjson"] = _ndjson(obs).replace(b"1.0", b"1.00")
    ehr.polls = [httpx.Response(202, headers={"Retry-After": "2", "X-Progress": "50%"})]
    export, _ = make_export(ehr)
    since = datetime(2026, 2, 1, tzinfo=UTC)
    with export.run("group", group_id="g1", since=since, types=["Patient", "Observation"]) as job:
        items = list(job)
    kickoff = ehr.requests[0]
    assert kickoff.url.path == "/fhir/Group/g1/$export"
    assert kickoff.url.params["_type"] == "Patient,Observation"
    assert kickoff.url.params["_since"] == "2026-02-01T00:00:00.000Z"
    assert kickoff.headers["prefer"] == "respond-async"
    assert [(i["resourceType"], i["id"]) for i in items if isinstance(i, dict)] == [
        ("Patient", "p1"),
        ("Patient", "p2"),
        ("Observation", "o1"),
    ]
    assert items[2]["valueQuantity"]["value"] == Decimal("1.00")  # type: ignore[index]
    assert str(items[2]["valueQuantity"]["value"]) == "1.00"  # type: ignore[index]
    assert job.transaction_time == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert clock.waits == [2.0]
    assert ehr.deleted == [STATUS]  # the finished job is cleaned up at the server


def test_retry_after_on_status_polls_is_honoured_and_capped(make_export: MakeExport, clock: Clock) -> None:
    ehr = FakeEHR(
        polls=[
            httpx.Response(202, headers={"Retry-After": "7"}),
            httpx.Response(202, headers={"Retry-After": "600"}),  # Oracle's; capped at 30 s
            httpx.Response(202),  # none: the poll interval
        ]
    )
    export, _ = make_export(ehr)
    with export.run("system") as job:
        assert list(job) == []
    assert clock.waits == [7.0, 30.0, 3.0]


def test_a_job_not_complete_in_time_is_cancelled(make_export: MakeExport, clock: Clock) -> None:
    ehr = FakeEHR(polls=[httpx.Response(202, headers={"Retry-After": "30"}) for _ in range(10)])
    export, _ = make_export(ehr)
    with pytest.raises(BulkExportTimeout):
        export.run("patient")
    assert ehr.deleted == [STATUS]
    assert clock.now <= 120


def test_a_failed_job_is_cancelled_and_fails_as_bulk_export_failed(make_export: MakeExport) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    ehr = FakeEHR(polls=[httpx.Response(500, json=outcome) for _ in range(2)])  # past the client retries
    export, _ = make_export(ehr)
    with pytest.raises(BulkExportFailed):
        export.run("system")
    assert ehr.deleted == [STATUS]


def test_a_refused_kickoff_fails_without_a_job_to_cancel(make_export: MakeExport) -> None:
    ehr = FakeEHR(kickoffs=[httpx.Response(400, json={"resourceType": "OperationOutcome"})])
    export, _ = make_export(ehr)
    with pytest.raises(BulkExportFailed):
        export.run("system", types=["Nope"])
    assert ehr.deleted == []


def test_a_kickoff_refused_as_busy_waits_for_the_running_job_then_proceeds(
    make_export: MakeExport, clock: Clock
) -> None:
    busy = {"Retry-After": "20"}
    ehr = FakeEHR(kickoffs=[httpx.Response(429, headers=busy) for _ in range(2)])
    ehr.files[f"{BASE}/files/Patient.ndjson"] = _ndjson(_resource("Patient", "p1"))
    export, _ = make_export(ehr)
    with export.run("system") as job:
        assert len(list(job)) == 1
    assert clock.waits == [20.0, 20.0]


class _Pauses(Unlimited):
    def __init__(self) -> None:
        self.pauses: list[float] = []

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_a_busy_kickoff_does_not_pause_the_facilitys_other_reads(settings: Settings, clock: Clock) -> None:
    ehr = FakeEHR(kickoffs=[httpx.Response(429, headers={"Retry-After": "5"})])
    ehr.polls = [httpx.Response(429, headers={"Retry-After": "1"})]  # a poll's 429 is a real rate limit
    politeness = _Pauses()
    client = make_client(httpx.MockTransport(ehr), attempts=2, politeness=politeness)
    export = BulkExport(client, settings, quarantine=lambda _: None, sleep=clock.sleep, clock=clock)
    with export.run("system") as job:
        list(job)
    assert clock.waits == [5.0]  # the busy 429 waited by us, not retried inside the client
    assert politeness.pauses == [1.0]


def test_a_server_busy_longer_than_the_wait_is_bulk_export_busy(make_export: MakeExport) -> None:
    ehr = FakeEHR(kickoffs=[httpx.Response(429, headers={"Retry-After": "25"}) for _ in range(100)])
    export, _ = make_export(ehr)
    with pytest.raises(BulkExportBusy):
        export.run("system")
    assert ehr.deleted == []


def test_one_export_per_facility_at_a_time(make_export: MakeExport) -> None:
    first, _ = make_export(FakeEHR())
    second, _ = make_export(FakeEHR())
    job = first.run("system")
    with pytest.raises(BulkExportBusy):
        second.run("system")
    job.close()
    with second.run("system") as again:
        assert list(again) == []


def test_the_job_of_a_killed_run_is_cancelled_by_the_next_one(
    make_export: MakeExport, settings: Settings
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    orphan = f"{BASE}/$export-poll/job-0"
    RedisExportLock(client, settings.redis_prefix, "fac-1", 60).remember(orphan)
    ehr = FakeEHR()
    export, _ = make_export(ehr)
    with export.run("system") as job:
        list(job)
    assert ehr.deleted == [orphan, STATUS]


def test_an_unparseable_line_is_quarantined_with_its_path_and_line_number_and_the_file_goes_on(
    make_export: MakeExport,
) -> None:
    url = f"{BASE}/files/Observation.ndjson?sig=secret-token"
    ehr = FakeEHR(
        files={
            url: _ndjson(
                _resource("Observation", "o1"),
                b'{"resourceType": "Observation", "id": "o2", ',
                b"",
                {"no": "type"},
            )
            + _ndjson(_resource("Observation", "o3"))
        }
    )
    export, quarantined = make_export(ehr)
    with export.run("system") as job:
        ids = [i["id"] for i in job if isinstance(i, dict)]
        stats = job.stats
    assert ids == ["o1", "o3"]
    assert [(q.path, q.line) for q in quarantined] == [
        ("/fhir/files/Observation.ndjson", 2),
        ("/fhir/files/Observation.ndjson", 4),
    ]
    assert "secret" not in repr(quarantined)
    assert quarantined[0].raw.startswith(b'{"resourceType": "Observation", "id": "o2"')
    assert stats.quarantined == 2


def test_deleted_entries_become_deletions_after_the_output(make_export: MakeExport) -> None:
    deletions = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": "Observation/o9"}},
            {"request": {"method": "DELETE", "url": f"{BASE}/Patient/p9/_history/3"}},
        ],
    }
    ehr = FakeEHR(files={f"{BASE}/files/Patient.ndjson": _ndjson(_resource("Patient", "p1"))})
    ehr.files[f"{BASE}/files/deleted.ndjson"] = _ndjson(deletions)
    ehr.manifest_extra = {"deleted": [{"type": "Bundle", "url": f"{BASE}/files/deleted.ndjson"}]}
    export, _ = make_export(ehr)
    with export.run("system", since=datetime(2026, 1, 1, tzinfo=UTC)) as job:
        items = list(job)
    assert items[1:] == [
        BulkDeletion(ResourceRef("Observation", "o9")),
        BulkDeletion(ResourceRef("Patient", "p9")),
    ]
    assert job.stats.deletions == 2


def test_duplicates_across_files_are_given_once_and_other_versions_kept(make_export: MakeExport) -> None:
    ehr = FakeEHR(
        files={
            f"{BASE}/files/Patient-1.ndjson": _ndjson(_resource("Patient", "p1"), _resource("Patient", "p2")),
            f"{BASE}/files/Patient-2.ndjson": _ndjson(
                _resource("Patient", "p2"), _resource("Patient", "p1", "2")
            ),
        }
    )
    export, _ = make_export(ehr)
    with export.run("system") as job:
        seen = [(i["id"], i["meta"]["versionId"]) for i in job if isinstance(i, dict)]
    assert seen == [("p1", "1"), ("p2", "1"), ("p1", "2")]
    assert job.stats.duplicates == 1


def test_a_download_broken_off_midway_goes_on_without_repeating_lines(make_export: MakeExport) -> None:
    url = f"{BASE}/files/Patient.ndjson"
    body = _ndjson(*(_resource("Patient", f"p{n}") for n in range(50)))
    ehr = FakeEHR(files={url: body}, broken_once={url: len(body) // 2})
    export, _ = make_export(ehr)
    with export.run("system") as job:
        ids = [i["id"] for i in job if isinstance(i, dict)]
    assert ids == [f"p{n}" for n in range(50)]
    assert job.stats.reopened == 1
    assert job.stats.quarantined == 0  # the half line at the break is not a bad line


def test_a_file_outside_the_base_url_is_refused_and_the_job_deleted(make_export: MakeExport) -> None:
    ehr = FakeEHR()
    ehr.manifest_extra = {"output": [{"type": "Patient", "url": "https://bucket.example/Patient.ndjson"}]}
    export, _ = make_export(ehr)
    with pytest.raises(ForeignHostError), export.run("system") as job:
        list(job)
    assert ehr.deleted == [STATUS]
    assert all(r.url.host == "ehr.test" for r in ehr.requests)


def test_a_line_longer_than_the_limit_is_flagged_and_memory_stays_bounded() -> None:
    chunks = iter([b'{"a":1}\n' + b"x" * 40, b"y" * 40, b"z" * 40 + b"\n", b'{"b":2}'])
    lines = list(_split_lines(chunks, limit=50))
    assert lines == [(b'{"a":1}', False), ((b"x" * 40 + b"y" * 40)[:50], True), (b'{"b":2}', False)]


def test_crlf_lines_and_lines_split_across_chunks() -> None:
    chunks = iter([b'{"a"', b':1}\r\n{"b":2}\r', b"\n"])
    assert list(_split_lines(chunks, limit=100)) == [(b'{"a":1}', False), (b'{"b":2}', False)]


def test_a_job_not_complete_by_until_is_kept_at_the_server_and_the_lease_freed(
    make_export: MakeExport, clock: Clock, settings: Settings
) -> None:
    ehr = FakeEHR(polls=[httpx.Response(202, headers={"Retry-After": "10"})] * 3)
    export, _ = make_export(ehr)
    told: list[str] = []
    with pytest.raises(BulkExportPending):
        export.run("patient", types=["Patient"], until=clock.now + 15, on_kickoff=told.append)
    assert told == [STATUS]  # told before the first poll
    assert ehr.deleted == []  # not cancelled
    assert clock.waits == [10]  # one wait fitted before `until`, the next would not
    # the lease is free again, and the URL kept beside it is not taken for an orphan by a resume
    again = FakeEHR(files={f"{BASE}/files/Patient.ndjson": _ndjson(_resource("Patient", "p1"))})
    export, _ = make_export(again)
    with export.run("patient", types=["Patient"], resume=STATUS) as job:
        assert [r["id"] for r in job if isinstance(r, dict)] == ["p1"]
    assert not any("$export?" in str(r.url) for r in again.requests)  # no kick-off: polled again
    assert str(again.requests[0].url) == STATUS
    assert again.deleted == [STATUS]  # read to the end, then deleted


def test_a_resumed_job_the_server_no_longer_knows_is_gone_not_failed(make_export: MakeExport) -> None:
    ehr = FakeEHR(polls=[httpx.Response(404)])
    export, _ = make_export(ehr)
    with pytest.raises(BulkExportGone):
        export.run("patient", types=["Patient"], resume=STATUS)
    fresh = FakeEHR(polls=[httpx.Response(404)])
    export, _ = make_export(fresh)
    with pytest.raises(BulkExportFailed):  # a job we just kicked off answering 404 is a failure
        export.run("patient", types=["Patient"])


def test_items_from_a_position_skip_the_files_and_lines_already_committed(make_export: MakeExport) -> None:
    ehr = FakeEHR(
        files={
            f"{BASE}/files/Patient.ndjson": _ndjson(_resource("Patient", "p1"), _resource("Patient", "p2")),
            f"{BASE}/files/Observation.ndjson": _ndjson(
                _resource("Observation", "o1"), _resource("Observation", "o2"), _resource("Observation", "o3")
            ),
        }
    )
    export, _ = make_export(ehr)
    with export.run("patient", resume=STATUS) as job:
        items = job.items((1, 1))
        first = next(items)
        assert isinstance(first, dict)
        assert first["id"] == "o2"
        assert job.completed == (1, 1)  # o2's line is complete only once the next item is asked for
        rest = [i["id"] for i in items if isinstance(i, dict)]
        assert job.completed == (2, 0)
    assert rest == ["o3"]


def test_a_kept_job_is_left_at_the_server_when_closed_with_keep(make_export: MakeExport) -> None:
    ehr = FakeEHR(files={f"{BASE}/files/Patient.ndjson": _ndjson(_resource("Patient", "p1"))})
    export, _ = make_export(ehr)
    job = export.run("patient", types=["Patient"])
    job.close(why="run stopped", keep=True)
    assert ehr.deleted == []
    export, _ = make_export(ehr)  # the lease is free: a new run may resume it
    with export.run("patient", types=["Patient"], resume=STATUS):
        pass
    assert ehr.deleted == [STATUS]


def test_a_resumed_job_still_counts_bulk_timeout_from_its_kickoff(
    make_export: MakeExport, settings: Settings
) -> None:
    ehr = FakeEHR(polls=[httpx.Response(202, headers={"Retry-After": "10"})])
    export, _ = make_export(ehr)
    long_ago = datetime.now(UTC) - settings.bulk_timeout + timedelta(seconds=5)
    with pytest.raises(BulkExportTimeout):  # 5 s left: the 10 s wait does not fit
        export.run("patient", types=["Patient"], resume=STATUS, kicked_off_at=long_ago)
    assert ehr.deleted == [STATUS]  # given up: cancelled

"""Bulk Data ``$export`` of one facility (FHIR Bulk Data Access IG, the async request pattern), through the
facility's own ``EHRClient``: its token, politeness, retries and base-URL guard apply to every request.

::

    export = BulkExport(client, settings)
    with export.run("group", group_id="g1", since=watermark, types=["Observation"]) as job:
        for item in job:            # a resource dict, or a BulkDeletion
            ...
        next_watermark = job.transaction_time

- **Kick-off** ``GET [Group/{id}/|Patient/]$export?_type=&_since=`` with ``Prefer: respond-async``: 202 and
  ``Content-Location`` (the status URL). A server busy with another job of ours answers 429: the kick-off
  is tried again after its ``Retry-After`` (capped) for up to ``bulk_kickoff_wait``, then
  ``BulkExportBusy``. That 429 means "busy", not "slow down": it does not pause the facility's reads.
- **One job per facility** at a time, whatever the number of processes: a lease in Redis
  (``{prefix}bulk:{facility}``), renewed while the job runs, free again ``bulk_lock_ttl`` after its holder
  died. The status URL is kept beside it, so the job of a run killed midway is cancelled by the next one
  instead of holding the server's one slot, unless that run resumes it.
- **Resuming** (``run(..., resume=status_url)``): a job an earlier run kicked off is polled again instead
  of a new kick-off, and its files read from where that run's commits got to (``BulkRun.items(start)``);
  ``bulk_timeout`` still counts from its kick-off. A job the server no longer knows (404/410 on its
  status URL or a file: expired, cancelled) is ``BulkExportGone``. ``until`` (a ``clock`` instant, the
  caller's time budget): a job not complete by then is ``BulkExportPending`` and kept at the server (no
  ``DELETE``), for the caller to resume; its ``retry_after`` is the wait still owed before the next poll,
  which the resuming call passes as ``poll_after`` (waited for first, or ``BulkExportPending`` again at
  once if it does not fit before ``until``): a job is never polled sooner than its server asked.
- **Polls** honour ``Retry-After`` up to ``bulk_retry_after_cap`` (``bulk_poll_interval`` when there is
  none); a 429/503/transport failure is polled through; a 4xx/500 or an OperationOutcome is the job's
  failure (``BulkExportFailed``); not complete ``bulk_timeout`` after the kick-off is ``BulkExportTimeout``.
  Giving up for any reason cancels the job (``DELETE`` on the status URL); a finished job is deleted too,
  which the IG asks of clients once the files are read.
- **Files** are streamed line by line (never a whole file, never a line over ``bulk_max_line_bytes``);
  a download broken off midway is opened again and the lines already read are skipped. A resource seen
  twice (the same type, id and version in two files) is given once. The manifest's ``deleted`` files
  (Bundles of ``DELETE`` requests) become ``BulkDeletion`` items. A line that is no resource is
  quarantined with its file's URL path (no query) and line number, and the file goes on. ``error`` files
  (OperationOutcomes) are counted and logged by issue code.
- Every file URL must lie under the facility's base URL: a manifest naming another host (a cloud bucket)
  fails as ``foreign_host`` before any connection, since the token goes only to the facility's host.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import urljoin, urlsplit

import httpx
import redis
import structlog

from app.ehr.client import EHRClient
from app.ehr.retry_after import parse_retry_after
from app.errors import (
    BulkExportBusy,
    BulkExportFailed,
    BulkExportGone,
    BulkExportPending,
    BulkExportTimeout,
    EHRRateLimited,
    EHRRejected,
    EHRServerError,
    EHRTransportError,
    GroupNotFound,
    IngestError,
    PermanentEHRError,
    TransientEHRError,
)
from app.fhir import jsonwire
from app.fhir.references import ResourceRef
from app.fhir.resources import content_hash, parse_instant
from app.settings import Settings

log = structlog.get_logger("ehr.bulk")

Level = Literal["system", "patient", "group"]
FILE_OPEN_ATTEMPTS = 3  # a file whose download breaks off is opened again this many times in all
RENEW_EVERY_LINES = 1000
_QUARANTINE_SNIPPET = 64 * 1024  # an over-long line is kept in quarantine truncated to this


@dataclass(frozen=True)
class BulkDeletion:
    """A resource the manifest's ``deleted`` files say was deleted since ``_since``."""

    ref: ResourceRef


#: What an export yields: a resource (its parsed JSON, decimals exact) or a deletion.
BulkItem = dict[str, Any] | BulkDeletion


@dataclass(frozen=True)
class UnparseableLine:
    facility_id: str
    path: str  # the file URL's path, never its query (a signed URL's query is a credential)
    line: int  # 1-based
    raw: bytes  # the line as read (truncated when over-long)
    error: str  # what is wrong, without content


#: Where unparseable lines go (``app.ingest.quarantine.NdjsonQuarantine``); it must keep them before
#: returning, since the export reads on.
LineQuarantine = Callable[[UnparseableLine], None]


class ExportLock(Protocol):
    """The one-export-per-facility lease, and the status URL of the job it covers."""

    def acquire(self) -> bool: ...
    def renew(self) -> None: ...
    def release(self) -> None: ...
    def orphan(self) -> str | None: ...
    def remember(self, status_url: str | None) -> None: ...


class RedisExportLock:
    """A lease in Redis, ``{prefix}bulk:{facility}``, with the job's status URL in ``…:job``."""

    def __init__(self, client: redis.Redis, prefix: str, facility_id: str, ttl_s: float) -> None:
        self._redis = client
        self._key = f"{prefix}bulk:{facility_id}"
        self._job_key = f"{self._key}:job"
        self._ttl_ms = max(1000, int(ttl_s * 1000))
        self._token = uuid.uuid4().hex

    def acquire(self) -> bool:
        return bool(self._redis.set(self._key, self._token, nx=True, px=self._ttl_ms))

    def renew(self) -> None:
        # Only our own lease: a holder that lost it (a pause longer than the TTL) must not steal it back.
        self._redis.eval(_RENEW, 1, self._key, self._token, self._ttl_ms)

    def release(self) -> None:
        self._redis.eval(_RELEASE, 1, self._key, self._token)

    def orphan(self) -> str | None:
        value = self._redis.get(self._job_key)
        return value.decode() if isinstance(value, bytes) else None

    def remember(self, status_url: str | None) -> None:
        if status_url is None:
            self._redis.delete(self._job_key)
        else:
            self._redis.set(self._job_key, status_url, ex=7 * 24 * 3600)


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class BulkStats:
    files: int = 0
    lines: int = 0
    resources: int = 0
    deletions: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: int = 0  # OperationOutcomes in the manifest's error files
    reopened: int = 0  # downloads that broke off and were opened again
    error_codes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _File:
    kind: Literal["output", "deleted", "error"]
    url: str
    type: str | None


class BulkExport:
    """Exports of one facility; ``run`` starts one. ``sleep``/``clock`` are injectable for tests; ``lock``
    defaults to the Redis lease of ``settings.redis_url``, ``quarantine`` to the quarantine table of
    ``settings.database_url`` (``app.ingest.quarantine.NdjsonQuarantine``)."""

    def __init__(
        self,
        client: EHRClient,
        settings: Settings,
        *,
        lock: ExportLock | None = None,
        quarantine: LineQuarantine | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self._lock = lock
        self._quarantine = quarantine
        self._sleep = sleep
        self._clock = clock

    def run(
        self,
        level: Level,
        *,
        group_id: str | None = None,
        since: datetime | None = None,
        types: Sequence[str] = (),
        resume: str | None = None,
        kicked_off_at: datetime | None = None,
        until: float | None = None,
        on_kickoff: Callable[[str], None] | None = None,
        poll_after: float = 0.0,
    ) -> BulkRun:
        """Kick off (or, given ``resume``, poll again the job of that status URL, kicked off at
        ``kicked_off_at``), poll until the manifest is there and return the job, whose iteration streams
        its files. Use it as a context manager (or call ``close``): that deletes the job at the server and
        frees the facility's lock, however the iteration ended (``close(keep=True)``: the job stays, to
        be resumed). ``on_kickoff`` is told the new job's status URL before the first poll. Raises
        ``BulkExportBusy``, ``BulkExportTimeout``, ``BulkExportFailed`` and the client's errors, the job
        cancelled then; ``BulkExportPending`` (not complete by ``until``: the job kept) and
        ``BulkExportGone`` (a resumed job the server no longer knows)."""
        if level == "group" and not group_id:
            raise ValueError("a group-level export needs group_id")
        lock = self._lock or self._redis_lock()
        if not lock.acquire():
            raise BulkExportBusy("an export of this facility is already running here")
        status_url: str | None = None
        timeout_s = self.settings.bulk_timeout.total_seconds()
        try:
            if resume is None:
                self._cancel_orphan(lock)
                status_url = self._kickoff(level, group_id, since, types, lock)
                lock.remember(status_url)
                if on_kickoff is not None:
                    on_kickoff(status_url)
            else:
                self._cancel_orphan(lock, keeping=resume)
                status_url = resume
                lock.remember(status_url)
                if kicked_off_at is not None:
                    timeout_s -= (datetime.now(UTC) - kicked_off_at).total_seconds()
                log.info("ehr.bulk.resumed", facility_id=self.client.facility_id, level=level)
            manifest = self._poll(
                status_url, lock, timeout_s=timeout_s, until=until, resumed=resume, first_wait=poll_after
            )
            return BulkRun(self, lock, status_url, manifest, resumed=resume is not None)
        except BulkExportPending:
            lock.release()  # the job stays at the server (and its URL beside the lease) for the next run
            raise
        except BulkExportGone:
            lock.remember(None)
            lock.release()
            raise
        except BaseException as exc:
            if status_url is not None:
                self._delete(status_url, why=getattr(exc, "reason", type(exc).__name__))
                lock.remember(None)
            lock.release()
            raise

    # -- kick-off and polling ----------------------------------------------------------------------

    def _kickoff(
        self,
        level: Level,
        group_id: str | None,
        since: datetime | None,
        types: Sequence[str],
        lock: ExportLock,
    ) -> str:
        path = {"system": "$export", "patient": "Patient/$export", "group": f"Group/{group_id}/$export"}[
            level
        ]
        params: dict[str, str] = {}
        if types:
            params["_type"] = ",".join(types)
        if since is not None:
            params["_since"] = since.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        url = str(httpx.URL(f"{self.client.base_url}/{path}", params=params))
        deadline = self._clock() + self.settings.bulk_kickoff_wait.total_seconds()
        while True:
            try:
                response = self.client.send(
                    "GET", url, ok=(202,), headers={"Prefer": "respond-async"}, busy_429=True
                )
            except EHRRateLimited as exc:
                wait = self._wait(exc.retry_after)
                if self._clock() + wait > deadline:
                    raise BulkExportBusy(
                        "the EHR kept refusing the kick-off: an export is in progress"
                    ) from exc
                log.info("ehr.bulk.kickoff_busy", facility_id=self.client.facility_id, wait_s=wait)
                lock.renew()
                self._sleep(wait)
                continue
            except EHRRejected as exc:
                if level == "group" and exc.status in (404, 410):  # the YAML's Group: a human must look
                    raise GroupNotFound(
                        f"Group kick-off refused: {exc.status} (no such Group, or no Group $export)"
                    ) from exc
                raise BulkExportFailed(f"kick-off refused: {exc.status}") from exc
            location = response.headers.get("content-location")
            if not location:
                raise BulkExportFailed("kick-off answered 202 without Content-Location")
            log.info("ehr.bulk.kicked_off", facility_id=self.client.facility_id, level=level)
            return str(urljoin(url, location))

    def _poll(
        self,
        status_url: str,
        lock: ExportLock,
        *,
        timeout_s: float,
        until: float | None,
        resumed: str | None,
        first_wait: float = 0.0,
    ) -> dict[str, Any]:
        deadline = self._clock() + timeout_s
        polls = 0
        if first_wait > 0:  # what an earlier run still owed the server's Retry-After
            if until is not None and self._clock() + first_wait > until:
                raise BulkExportPending("not polled yet: its Retry-After runs", retry_after=first_wait)
            self._sleep(first_wait)
        while True:
            polls += 1
            try:
                response = self.client.send("GET", status_url, ok=(200, 202))
            except EHRRejected as exc:
                if resumed is not None and exc.status in (404, 410):
                    raise BulkExportGone(f"status poll: {exc.status}") from exc
                raise BulkExportFailed(f"status poll: {exc.reason}") from exc
            except (EHRServerError, PermanentEHRError) as exc:
                raise BulkExportFailed(f"status poll: {exc.reason}") from exc
            except TransientEHRError as exc:  # 429, 502-504, transport: the job may well be fine
                wait = self._wait(exc.retry_after)
            else:
                if response.status_code == 200:
                    log.info("ehr.bulk.complete", facility_id=self.client.facility_id, polls=polls)
                    return _manifest(response)
                header = response.headers.get("retry-after")
                wait = self._wait(parse_retry_after(header, now=datetime.now(UTC)))
            if self._clock() + wait > deadline:
                raise BulkExportTimeout(f"not complete after {polls} polls")
            if until is not None and self._clock() + wait > until:
                raise BulkExportPending(f"not complete after {polls} polls", retry_after=wait)
            lock.renew()
            self._sleep(wait)

    def _wait(self, retry_after: float | None) -> float:
        if retry_after is None:
            return self.settings.bulk_poll_interval.total_seconds()
        return max(0.0, min(retry_after, self.settings.bulk_retry_after_cap.total_seconds()))

    def _delete(self, status_url: str, *, why: str) -> None:
        """Cancel (or, once read, clean up) a job; best effort: the server expires jobs on its own too."""
        try:
            self.client.send("DELETE", status_url, ok=(200, 202, 204, 404, 410))
        except IngestError as exc:
            log.warning("ehr.bulk.delete_failed", facility_id=self.client.facility_id, reason=exc.reason)
            return
        log.info("ehr.bulk.deleted", facility_id=self.client.facility_id, why=why)

    def cancel(self, status_url: str, *, why: str) -> None:
        """Cancel a job kept by an earlier run that will not be resumed (best effort)."""
        self._delete(status_url, why=why)

    def _cancel_orphan(self, lock: ExportLock, *, keeping: str | None = None) -> None:
        orphan = lock.orphan()
        if orphan is not None and orphan != keeping:
            self._delete(orphan, why="orphaned by an earlier run")
            lock.remember(None)

    # -- locks and quarantine ----------------------------------------------------------------------

    def _redis_lock(self) -> ExportLock:
        client = redis.Redis.from_url(self.settings.redis_url)
        ttl = self.settings.bulk_lock_ttl.total_seconds()
        return RedisExportLock(client, self.settings.redis_prefix, self.client.facility_id, ttl)

    def quarantine(self, line: UnparseableLine) -> None:
        if self._quarantine is None:
            # Deferred: only an export that meets a bad line needs a database (and app.ingest builds on
            # app.ehr, not the reverse).
            from app.db.engine import make_engine
            from app.ingest.quarantine import NdjsonQuarantine

            self._quarantine = NdjsonQuarantine(make_engine(self.settings.database_url, pool_size=1))
        self._quarantine(line)


class BulkRun:
    """A completed job: ``transaction_time`` (the next ``_since``), its files, and iteration over their
    items (once; ``items(start)`` from a position). Closing it deletes the job and frees the facility's
    lock; ``close(keep=True)`` only frees the lock (the job is resumed later). ``completed`` is the
    position of the last line whose items were all given: ``(file index, lines of it)``."""

    def __init__(
        self,
        export: BulkExport,
        lock: ExportLock,
        status_url: str,
        manifest: dict[str, Any],
        *,
        resumed: bool = False,
    ) -> None:
        self._export = export
        self._lock = lock
        self.status_url = status_url
        self.manifest = manifest
        self.transaction_time = _transaction_time(manifest)
        self.files = _files(manifest)
        self.stats = BulkStats()
        self._seen: set[tuple[str, str, str]] = set()
        self._closed = False
        self._last_renewal = export._clock()
        self.resumed = resumed
        self.completed: tuple[int, int] = (0, 0)

    def __enter__(self) -> BulkRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(why="done" if exc is None else getattr(exc, "reason", type(exc).__name__))

    def close(self, *, why: str = "done", keep: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if keep:
                log.info("ehr.bulk.kept", facility_id=self._export.client.facility_id, why=why)
                return
            self._export._delete(self.status_url, why=why)
            self._lock.remember(None)
        finally:
            self._lock.release()

    def __iter__(self) -> Iterator[BulkItem]:
        return self.items()

    def items(self, start: tuple[int, int] = (0, 0)) -> Iterator[BulkItem]:
        """The items of the files from ``start`` (file index, lines of it already read) on."""
        if self._closed:
            raise RuntimeError("the export job is closed")
        client = self._export.client
        first, skip = start
        self.completed = start
        for index, file in enumerate(self.files):
            if index < first:
                continue
            self.stats.files += 1
            for number, raw, oversize in self._lines(file, skip=skip if index == first else 0):
                self.stats.lines += 1
                if self.stats.lines % RENEW_EVERY_LINES == 0:
                    self._renew()
                yield from self._items(file, number, raw, oversize)
                self.completed = (index, number)
            self.completed = (index + 1, 0)
        log.info(
            "ehr.bulk.read",
            facility_id=client.facility_id,
            files=self.stats.files,
            resources=self.stats.resources,
            deletions=self.stats.deletions,
            duplicates=self.stats.duplicates,
            quarantined=self.stats.quarantined,
            errors=self.stats.errors,
        )

    def _renew(self) -> None:
        now = self._export._clock()
        if now - self._last_renewal >= self._export.settings.bulk_lock_ttl.total_seconds() / 3:
            self._lock.renew()
            self._last_renewal = now

    # -- one line ----------------------------------------------------------------------------------

    def _items(self, file: _File, number: int, raw: bytes, oversize: bool) -> Iterator[BulkItem]:
        if oversize:
            self._quarantine(file, number, raw, "line longer than bulk_max_line_bytes")
            return
        if not raw.strip():
            return  # a blank line (a trailing newline, CRLF files) is no record
        try:
            value = jsonwire.loads(raw)
        except ValueError as exc:
            self._quarantine(file, number, raw, f"not JSON ({type(exc).__name__})")
            return
        if file.kind == "error":
            self._count_error(value)
        elif file.kind == "deleted":
            yield from self._deletions(file, number, raw, value)
        elif not _is_resource(value):
            self._quarantine(file, number, raw, "not a FHIR resource (no resourceType or id)")
        elif self._first_time(value["resourceType"], value["id"], _version_key(value)):
            self.stats.resources += 1
            yield value

    def _deletions(self, file: _File, number: int, raw: bytes, value: Any) -> Iterator[BulkItem]:
        refs = _deleted_refs(value)
        if refs is None:
            self._quarantine(file, number, raw, "not a Bundle of DELETE requests")
            return
        for ref in refs:
            if self._first_time(ref.resource_type, ref.resource_id, "deleted"):
                self.stats.deletions += 1
                yield BulkDeletion(ref)

    def _first_time(self, resource_type: str, resource_id: str, version: str) -> bool:
        key = (resource_type, resource_id, version)
        if key in self._seen:
            self.stats.duplicates += 1
            return False
        self._seen.add(key)
        return True

    def _count_error(self, value: Any) -> None:
        self.stats.errors += 1
        issues = value.get("issue") if isinstance(value, dict) else None
        for issue in issues if isinstance(issues, list) else []:
            code = issue.get("code") if isinstance(issue, dict) else None
            key = code if isinstance(code, str) and code.isascii() and len(code) <= 40 else "unknown"
            self.stats.error_codes[key] = self.stats.error_codes.get(key, 0) + 1

    def _quarantine(self, file: _File, number: int, raw: bytes, error: str) -> None:
        client = self._export.client
        path = urlsplit(file.url).path
        self.stats.quarantined += 1
        log.warning(
            "ehr.bulk.line_unparseable", facility_id=client.facility_id, path=path, line=number, error=error
        )
        self._export.quarantine(
            UnparseableLine(client.facility_id, path, number, raw[:_QUARANTINE_SNIPPET], error)
        )

    # -- streaming ---------------------------------------------------------------------------------

    def _lines(self, file: _File, *, skip: int = 0) -> Iterator[tuple[int, bytes, bool]]:
        """(line number, bytes, over-long) of a file after its first ``skip`` lines, streamed; a download
        that breaks off is opened again and the lines already given are skipped (the file is the
        server's fixed output). A file of a resumed job that is gone (404/410) is ``BulkExportGone``."""
        client = self._export.client
        limit = self._export.settings.bulk_max_line_bytes
        given = skip
        for attempt in range(1, FILE_OPEN_ATTEMPTS + 1):
            try:
                with client.stream(file.url, headers={"Accept": "application/fhir+ndjson"}) as response:
                    for number, (raw, oversize) in enumerate(_split_lines(response.iter_bytes(), limit), 1):
                        if number > given:
                            given = number
                            yield number, raw, oversize
                return
            except EHRRejected as exc:
                if self.resumed and exc.status in (404, 410):
                    raise BulkExportGone(f"file: {exc.status}") from exc
                raise
            except EHRTransportError:
                if attempt == FILE_OPEN_ATTEMPTS:
                    raise
                self.stats.reopened += 1
                log.info(
                    "ehr.bulk.file_reopened",
                    facility_id=client.facility_id,
                    path=urlsplit(file.url).path,
                    after_line=given,
                )


def _split_lines(chunks: Iterator[bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """Lines of a byte stream (``\\n``-separated, a trailing ``\\r`` dropped), each at most ``limit`` bytes:
    a longer one is given truncated and flagged, and its rest skipped, so memory stays bounded."""
    buffer = bytearray()
    skipping = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not skipping:
                buffer += piece
            if end < 0:
                if len(buffer) > limit and not skipping:
                    skipping = True  # flag it now; drop what follows until the newline
                break
            if skipping:
                yield bytes(buffer[:limit]), True
            else:
                line = bytes(buffer)
                yield (line[:-1] if line.endswith(b"\r") else line), len(line) > limit
            buffer.clear()
            skipping = False
            start = end + 1
    if skipping:
        yield bytes(buffer[:limit]), True
    elif buffer:
        yield bytes(buffer), len(buffer) > limit


def _manifest(response: httpx.Response) -> dict[str, Any]:
    try:
        manifest = jsonwire.loads(response.content)
    except ValueError as exc:
        raise BulkExportFailed("the manifest is not JSON") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("output", []), list):
        raise BulkExportFailed("the manifest is not a Bulk Data manifest")
    return manifest


def _transaction_time(manifest: dict[str, Any]) -> datetime:
    value = manifest.get("transactionTime")
    if not isinstance(value, str):
        raise BulkExportFailed("the manifest has no transactionTime")
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise BulkExportFailed("the manifest's transactionTime is not an instant") from exc


def _files(manifest: dict[str, Any]) -> list[_File]:
    """Output first, then deletions (a resource deleted after its export is then a tombstone), then
    errors; each URL as the manifest gives it (the client's guard checks it is under the base)."""
    files: list[_File] = []
    for kind in ("output", "deleted", "error"):
        entries = manifest.get(kind) or []
        if not isinstance(entries, list):
            raise BulkExportFailed(f"the manifest's {kind} is not a list")
        for entry in entries:
            url = entry.get("url") if isinstance(entry, dict) else None
            if not isinstance(url, str) or not url:
                raise BulkExportFailed(f"a manifest {kind} entry has no url")
            rtype = entry.get("type")
            files.append(_File(kind, url, rtype if isinstance(rtype, str) else None))
    return files


def _is_resource(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("resourceType"), str)
        and isinstance(value.get("id"), str)
        and bool(value["id"])
    )


def _version_key(resource: dict[str, Any]) -> str:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        for key in ("versionId", "lastUpdated"):
            if isinstance(meta.get(key), str):
                return f"{key}:{meta[key]}"
    return f"hash:{content_hash(resource)}"


def _deleted_refs(value: Any) -> list[ResourceRef] | None:
    """The resources a ``deleted`` line names (a Bundle whose entries are ``DELETE Type/id``)."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return None
    refs: list[ResourceRef] = []
    for entry in value.get("entry") or []:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or str(request.get("method", "")).upper() != "DELETE":
            return None
        url = request.get("url")
        if not isinstance(url, str):
            return None
        parts = urlsplit(url).path.split("/_history/")[0].strip("/").split("/")
        if len(parts) < 2 or not parts[-2] or not parts[-1]:
            return None
        refs.append(ResourceRef(parts[-2], parts[-1]))
    return refs

"""Group commit for the receiver: concurrent requests share one transaction.

Each request hands its intake (inbox entries and a ledger observation) to ``InboxWriter.commit`` and
waits; the committer task (``app.ingest.group_commit``) takes everything pending (up to ``max_batch``
entries) and, in one transaction (``_write``: one round trip when the subscriptions' ledger rows are
as this writer left them, ``_LedgerCache``; else two), claim the sender message ids
(Standard Webhooks: a message already committed is a replay and stores nothing), lock the event-ledger
rows of the subscriptions involved (both in key order, so two committers or two processes never deadlock),
apply the observations in arrival order (which fixes each numbered event's epoch, part of its dedup
key), insert the inbox rows in one statement with ON CONFLICT DO NOTHING on the dedup key, write the
ledger rows back, commit, and only then wake the requests. A request is answered 2xx only after its
rows are committed. When the connection is lost every waiting request gets the error (and answers
503); when the transaction fails on a healthy connection, each request is retried in a transaction of
its own, so one request's unstorable value (``Unstorable``: the receiver quarantines that body) never
fails the others sharing its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from psycopg.pq import TransactionStatus
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import InboxRow, SubscriptionLedger, sql_types
from app.errors import Unstorable
from app.fhir import jsonwire
from app.ingest.group_commit import CONNECT_TIMEOUT_S, BatchInterrupted, GroupCommit
from app.ingest.inbox import INBOX_COLUMNS, InboxEntry, Intake
from app.ingest.ledger import LEDGER_COLUMNS, LEDGER_KEY, LedgerState, apply
from app.metrics import BATCHES_ISOLATED, COMMIT_BATCH, COMMIT_SECONDS, LEDGER_CACHE

log = structlog.get_logger("ingest.writer")


# One statement writes the inbox rows and the ledger rows (a data-modifying CTE), so a batch costs two
# round trips: BEGIN and lock the ledger rows, then this and COMMIT (``_write``). Rows travel as one
# JSON document each (``jsonb_to_recordset``): far cheaper to build than per-column arrays adapted
# element by element.
# Column names come from InboxEntry and LedgerState, their SQL types from the models: nothing restated.
_INBOX_TYPES = sql_types(InboxRow, INBOX_COLUMNS)


def _insert_inbox(condition: str = "") -> str:
    return f"""
    INSERT INTO inbox ({", ".join(_INBOX_TYPES)})
    SELECT r.* FROM jsonb_to_recordset(%(inbox)s::jsonb)
        AS r({", ".join(f"{c} {t}" for c, t in _INBOX_TYPES.items())}) {condition}
    ON CONFLICT (facility_id, dedup_key) DO NOTHING
    RETURNING facility_id, dedup_key
"""  # noqa: S608 - column names are the constants above, values are a bound parameter


# Creates missing ledger rows and locks all of them; the no-op update is what makes RETURNING see (and
# lock) rows that already exist.
_LOCK_LEDGER = f"""
    INSERT INTO subscription_ledger AS l (facility_id, subscription)
    SELECT * FROM unnest(%(ledger_facility)s::text[], %(ledger_subscription)s::text[])
    ON CONFLICT (facility_id, subscription) DO UPDATE SET epoch = l.epoch
    RETURNING {", ".join(f"l.{c}" for c in LEDGER_COLUMNS)}
"""  # noqa: S608 - column names are constants
# (Named, not l.*: a prepared statement whose result type changes with the table fails until prepared
# again. That, a statement gone from the session, and the retry are handled in InboxWriter._transaction.)

_LEDGER_TYPES = sql_types(SubscriptionLedger, LEDGER_COLUMNS)
_LEDGER_SET = [c for c in LEDGER_COLUMNS if c not in LEDGER_KEY]


def _update_ledger(extra_from: str = "", condition: str = "") -> str:
    return f"""
    UPDATE subscription_ledger AS l
    SET {", ".join(f"{c} = u.{c}" for c in _LEDGER_SET)}, updated_at = now()
    FROM jsonb_to_recordset(%(ledger)s::jsonb) AS u({", ".join(f"{c} {t}" for c, t in _LEDGER_TYPES.items())})
        {extra_from}
    WHERE {" AND ".join(f"l.{c} = u.{c}" for c in LEDGER_KEY)} {condition}
"""  # noqa: S608 - column names are the constants above, values are a bound parameter


_WRITE = (
    f"WITH ledger AS ({_update_ledger()}), ins AS ({_insert_inbox()}) SELECT facility_id, dedup_key FROM ins"  # noqa: S608 - constants only
)

# The one-round-trip write (``_LedgerCache``): the ledger rows are locked, and the batch written only
# if each row still counts the notifications the cache says, and was last written at the instant it
# says (every write of the ledger goes through ``app.ingest.ledger.apply``, which counts each
# notification and stamps its time: a row another writer changed counts more, and a row rebuilt from
# a failed prediction has another stamp); else nothing is written and the one row answered has no
# facility, only whether a row was ahead of the cache (another writer's notifications) or behind it
# (the transaction it built on had not reached the row yet, or failed). FOR UPDATE waits for a
# concurrent transaction and then sees its version, so the check and the write are of one version.
_WRITE_CACHED = f"""
    WITH expected AS (
        SELECT * FROM jsonb_to_recordset(%(expected)s::jsonb)
            AS e(facility_id text, subscription text, notifications bigint, last_notification_at timestamptz)
    ), locked AS (
        SELECT l.facility_id, l.subscription, l.notifications, l.last_notification_at
        FROM subscription_ledger AS l JOIN expected AS e USING (facility_id, subscription)
        ORDER BY l.facility_id, l.subscription
        FOR UPDATE OF l
    ), fresh AS (
        SELECT count(*) FILTER (
                   WHERE locked.notifications = e.notifications
                   AND locked.last_notification_at IS NOT DISTINCT FROM e.last_notification_at
               ) = %(keys)s::int AS ok,
               coalesce(bool_or(locked.notifications > e.notifications), false) AS ahead
        FROM locked JOIN expected AS e USING (facility_id, subscription)
    ), ledger AS ({_update_ledger(", fresh", "AND fresh.ok")}),
    ins AS ({_insert_inbox("CROSS JOIN fresh WHERE fresh.ok")})
    SELECT facility_id, dedup_key FROM ins
    UNION ALL SELECT NULL, CASE WHEN ahead THEN 'ahead' ELSE 'behind' END FROM fresh WHERE NOT fresh.ok
"""  # noqa: S608 - constants only


# Claims the batch's sender message ids (in key order: two receivers never deadlock on them). A row
# inserted now (xmax = 0) is a first delivery; an existing one, committed by this or another process,
# makes the copy a replay. Its window is extended to the latest copy's, which could still pass the
# signature check. A copy racing an uncommitted first delivery waits for it: committed, it is a
# replay; rolled back, this copy is the first.
_CLAIM_MESSAGES = """
    INSERT INTO webhook_messages AS w (facility_id, message_sha256, expires_at)
    SELECT f, m, to_timestamp(e)
    FROM unnest(%(facility_id)s::text[], %(sha256)s::text[], %(expires)s::bigint[]) AS u(f, m, e)
    ORDER BY f, m
    ON CONFLICT (facility_id, message_sha256)
    DO UPDATE SET expires_at = greatest(w.expires_at, excluded.expires_at)
    RETURNING w.facility_id, w.message_sha256, (w.xmax = 0) AS inserted
"""
# Message ids are kept a while past their window: the receivers' clocks may run behind Postgres's.
_PRUNE_MESSAGES = "DELETE FROM webhook_messages WHERE expires_at < now() - interval '5 minutes'"
PRUNE_INTERVAL_S = 60.0


@dataclass(frozen=True)
class _Prepared:
    """A statement prepared once per connection (``PREPARE``) and run as ``EXECUTE name(values)`` in a
    query of several statements (``_write``): planned once, like the extended protocol's prepared
    statements, with none of its extra waits. Its ``%(name)s`` placeholders become ``$n``; each
    parameter's type is the cast at its first use."""

    name: str
    sql: str

    @property
    def params(self) -> list[str]:
        return list(dict.fromkeys(re.findall(r"%\((\w+)\)s", self.sql)))

    def prepare(self) -> str:
        numbered = self.sql
        for index, param in enumerate(self.params, start=1):
            numbered = numbered.replace(f"%({param})s", f"${index}")
        return f"PREPARE {self.name} AS {numbered}"

    def execute(self) -> str:
        return f"EXECUTE {self.name}({', '.join(f'%({p})s' for p in self.params)})"


_CLAIM = _Prepared("ehri_claim_messages", _CLAIM_MESSAGES)
_LOCK = _Prepared("ehri_lock_ledger", _LOCK_LEDGER)
_WRITE_ROWS = _Prepared("ehri_write_rows", _WRITE)
_WRITE_CACHED_ROWS = _Prepared("ehri_write_cached_rows", _WRITE_CACHED)
_PREPARE_ALL = ";".join(p.prepare() for p in (_CLAIM, _LOCK, _WRITE_ROWS, _WRITE_CACHED_ROWS))


def with_epoch(entry: InboxEntry, epoch: int) -> InboxEntry:
    """The entry with its final dedup key: a numbered event's key names the epoch it belongs to, so a
    counter that restarted (a new epoch) is never taken for a duplicate of the old numbers."""
    return replace(entry, dedup_key=f"{entry.dedup_key}|e{epoch}", ledger_index=None)


def _inbox_row(entry: InboxEntry) -> dict[str, Any]:
    # Not dataclasses.asdict: that deep-copies the payload, on the receiver's hot path.
    row = {c: getattr(entry, c) for c in INBOX_COLUMNS}
    if entry.notified_at is not None:  # the rows travel as JSON
        row["notified_at"] = entry.notified_at.isoformat()
    return row


def _ledger_row(state: LedgerState) -> dict[str, Any]:
    values = ((c, getattr(state, c)) for c in LEDGER_COLUMNS)
    return {c: v.isoformat() if isinstance(v, datetime) else v for c, v in values}


@dataclass(frozen=True)
class WriteResult:
    stored: int
    duplicates: int
    gaps: int = 0
    new_epoch: bool = False
    replay: bool = False  # the sender's message id was committed before: nothing stored


# Data exception, integrity violation, program limit exceeded: what a request's own values cause (too
# long, out of range, invalid, too large for an index); retrying them cannot help.
_DATA_ERROR_CLASSES = ("22", "23", "54")


def _refusal(exc: Exception) -> BaseException:
    """What a request is answered when its transaction failed: its data's fault, or the database's."""
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _DATA_ERROR_CLASSES:
        # The SQLSTATE and class only: a server message can quote the refused value.
        return Unstorable(f"the ledger refused a value ({exc.sqlstate}, {type(exc).__name__})")
    return exc


def _results(
    jobs: list[_Job], outcomes: list[_Outcome], stored: Counter[tuple[str, str]]
) -> list[WriteResult | BaseException]:
    results: list[WriteResult | BaseException] = []
    for outcome in outcomes:
        if outcome.replay:
            results.append(WriteResult(0, len(outcome.entries), replay=True))
            continue
        mine = 0
        for entry in outcome.entries:
            key = (entry.facility_id, entry.dedup_key)
            if stored[key] > 0:
                stored[key] -= 1
                mine += 1
        results.append(WriteResult(mine, len(outcome.entries) - mine, outcome.gaps, outcome.new_epoch))
    return results


@dataclass
class _Job:
    intake: Intake | None
    entries: list[InboxEntry]


@dataclass
class _Outcome:
    entries: list[InboxEntry]
    gaps: int = 0
    new_epoch: bool = False
    replay: bool = False


class InboxWriter(GroupCommit[_Job, WriteResult]):
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 256, slots: int = 1) -> None:
        # psycopg directly, one connection per committer: the hot path cannot afford an ORM layer per
        # batch; a broken connection is replaced at the next batch, whose requests get the error. One
        # committer: with the ledger cache a batch is one statement, and a second committer's batch
        # would only wait for the first one's row locks (measured with bench/webhook.py: two gave
        # ~10 % fewer acks/s and no lower latency, and raced the first to the locks now and then).
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        super().__init__(conninfo, max_batch=max_batch, slots=slots, name="inbox-writer", autocommit=True)
        self._next_prune = 0.0
        self._prepared: dict[int, psycopg.AsyncConnection[Any]] = {}
        self._ledger = _LedgerCache()

    async def connection(self, slot: int) -> psycopg.AsyncConnection[Any]:
        """The committer's connection, with the writer's statements prepared on it."""
        conn = await super().connection(slot)
        if self._prepared.get(slot) is not conn:
            async with psycopg.AsyncClientCursor(conn) as cur:
                await cur.execute(_PREPARE_ALL)
            self._prepared[slot] = conn
        return conn

    async def write(self, entries: list[InboxEntry]) -> WriteResult:
        """Commit inbox entries that need no ledger (their keys are final)."""
        if not entries:
            return WriteResult(0, 0)
        return await self.submit(_Job(None, entries), len(entries) + 1)

    async def commit(self, intake: Intake) -> WriteResult:
        """Commit one notification: its inbox entries and its event-ledger observation."""
        return await self.submit(_Job(intake, intake.entries), len(intake.entries) + 1)

    async def after_batch(self, slot: int) -> None:
        if slot == 0 and time.monotonic() >= self._next_prune:  # between batches, answers sent
            self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
            try:
                await self._prune(await self.connection(0))
            except (psycopg.Error, OSError) as exc:  # the next round tries again; the table only grows
                log.warning("ingest.prune_failed", error=type(exc).__name__)

    async def commit_batch(self, slot: int, items: list[_Job]) -> list[WriteResult | BaseException]:
        """Each job's result or error. A batch that fails while its connection stays healthy failed
        because of what some job holds: every job is then retried alone, so one tenant's unstorable
        value fails only its own request (``Unstorable``) and the others commit."""
        COMMIT_BATCH.observe(len(items))
        started = time.perf_counter()
        try:
            answers = _results(items, *(await self._transaction(slot, items)))
        except Exception as exc:  # noqa: BLE001 - every waiting request must learn of the failure
            if len(items) == 1 or self.connection_lost(slot):
                return [_refusal(exc)] * len(items)
            first = exc
        else:
            COMMIT_SECONDS.observe(time.perf_counter() - started)
            return answers
        log.warning("ingest.batch_isolated", jobs=len(items), error=type(first).__name__)
        BATCHES_ISOLATED.inc()
        isolated: list[WriteResult | BaseException] = []
        for index, job in enumerate(items):
            try:
                isolated += _results([job], *(await self._transaction(slot, [job])))
            except asyncio.CancelledError:  # stop() gave up: the jobs committed so far are answered
                raise BatchInterrupted(isolated) from None
            except Exception as exc:  # noqa: BLE001 - this job's own failure, answered to it alone
                if self.connection_lost(slot):  # the database went away meanwhile: no more tries
                    return isolated + [exc] * (len(items) - index)
                isolated.append(_refusal(exc))
        return isolated

    async def _transaction(
        self, slot: int, jobs: list[_Job]
    ) -> tuple[list[_Outcome], Counter[tuple[str, str]]]:
        for attempt in (1, 2):
            conn = await self.connection(slot)
            try:
                return await _write(conn, jobs, self._ledger)
            except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.FeatureNotSupported):
                # The session lost its prepared statements (DISCARD ALL) or one no longer fits its
                # table ("cached plan must not change result type", after a migration): nothing was
                # written; prepare them again and retry once.
                if attempt == 2:
                    raise
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("DEALLOCATE ALL")
                self._prepared.pop(slot, None)
            except psycopg.OperationalError:
                if not (conn.broken or conn.closed):
                    raise
                await self.drop_connection(slot)
                # A connection that died while idle (Postgres restarted): one retry on a fresh one is
                # safe, because the inbox insert is idempotent on its dedup keys.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def prune_messages(self) -> int:
        """Forget the sender message ids whose replay window has closed; returns how many."""

        async with await psycopg.AsyncConnection.connect(
            self.conninfo, connect_timeout=CONNECT_TIMEOUT_S
        ) as conn:
            return await self._prune(conn)

    @staticmethod
    async def _prune(conn: psycopg.AsyncConnection[Any]) -> int:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(_PRUNE_MESSAGES)
            return cur.rowcount


LedgerKey = tuple[str, str]
LEDGER_CACHE_ENTRIES = 4096  # subscriptions remembered per process (a sender can name any number)
SHARED_BACKOFF_S = 10.0  # how long a row another writer changed goes the two-round-trip way


class _LedgerCache:
    """The ledger rows as this writer's latest transaction leaves them (committed, or still in flight),
    so that the next batch on the same subscriptions commits in one round trip (``_WRITE_CACHED``)
    instead of locking and reading them first, and holds their lock only while Postgres runs its
    statement, not across the turns of the loop between two round trips.

    Never trusted blindly: the write checks, under each row's lock, that it counts the notifications
    the cache says and was last written at the instant it says. A row changed by another writer
    (another receiver process), or a transaction this one built on that failed, makes the batch go the
    two-round-trip way, and the rows are forgotten until a transaction reads them again; rows another
    writer changed are not cached for a while
    (``SHARED_BACKOFF_S``: with several receiver processes on one subscription, most cached attempts
    would fail and cost a round trip more)."""

    def __init__(self, max_entries: int = LEDGER_CACHE_ENTRIES) -> None:
        self._rows: OrderedDict[LedgerKey, LedgerState] = OrderedDict()
        self._max = max_entries
        self._shared_until: OrderedDict[LedgerKey, float] = OrderedDict()  # rows others write too

    def lookup(self, keys: list[LedgerKey]) -> dict[LedgerKey, LedgerState] | None:
        """A copy of every key's row (``apply`` mutates it), or None unless all are known."""
        found: dict[LedgerKey, LedgerState] = {}
        now = time.monotonic()
        for key in keys:
            state = self._rows.get(key)
            if state is None or self._shared_until.get(key, 0.0) > now:
                return None
            found[key] = replace(state, missing=[list(r) for r in state.missing])
        return found

    def predict(self, states: dict[LedgerKey, LedgerState]) -> None:
        """The rows as a transaction about to commit will leave them."""
        for key, state in states.items():
            self._rows[key] = state
            self._rows.move_to_end(key)
        while len(self._rows) > self._max:
            self._rows.popitem(last=False)

    def forget(self, keys: list[LedgerKey], *, shared: bool = False) -> None:
        """Drop the rows; ``shared``: another writer changed one of them, so for a while these rows go
        the two-round-trip way (a cached attempt would mostly fail and cost a round trip more)."""
        for key in keys:
            self._rows.pop(key, None)
        if shared:
            until = time.monotonic() + SHARED_BACKOFF_S
            for key in keys:
                self._shared_until[key] = until
                self._shared_until.move_to_end(key)
            while len(self._shared_until) > self._max:  # the oldest marks first: bounded, O(1) each
                self._shared_until.popitem(last=False)


async def _write(
    conn: psycopg.AsyncConnection[Any], jobs: list[_Job], cache: _LedgerCache
) -> tuple[list[_Outcome], Counter[tuple[str, str]]]:
    """One transaction: in one round trip when ``cache`` knows every ledger row of the batch and no
    sender message id is to be claimed, else in two (``_write_locked``)."""
    messages = _Messages.of(jobs)
    keys = sorted({job.intake.observation.key for job in jobs if job.intake is not None})
    cached = cache.lookup(keys) if keys and not messages.keys else None
    if cached is not None:
        written = await _write_cached(conn, jobs, cached, cache)
        if written is not None:
            LEDGER_CACHE.labels("hit").inc()
            return written
        LEDGER_CACHE.labels("stale").inc()
    elif keys:
        LEDGER_CACHE.labels("miss").inc()
    return await _write_locked(conn, jobs, messages, keys, cache)


async def _write_cached(
    conn: psycopg.AsyncConnection[Any],
    jobs: list[_Job],
    states: dict[LedgerKey, LedgerState],
    cache: _LedgerCache,
) -> tuple[list[_Outcome], Counter[tuple[str, str]]] | None:
    """The batch applied to the cached rows and written in one statement (its own transaction); None,
    with nothing written, when a row is no longer as cached."""
    keys = list(states)
    expected = [
        {
            "facility_id": k[0],
            "subscription": k[1],
            "notifications": s.notifications,
            "last_notification_at": s.last_notification_at.isoformat() if s.last_notification_at else None,
        }
        for k, s in states.items()
    ]
    outcomes = _apply_ledger(states, jobs)
    params = {"expected": json.dumps(expected), "keys": len(keys), **_rows(states, outcomes)}
    cache.predict(states)
    try:
        async with psycopg.AsyncClientCursor(conn) as cur:
            await cur.execute(_WRITE_CACHED_ROWS.execute(), params)
            rows = await cur.fetchall()
    except BaseException:
        cache.forget(keys)
        raise
    stale = [row.dedup_key for row in rows if row.facility_id is None]
    if stale:
        cache.forget(keys, shared=stale[0] == "ahead")
        return None
    return outcomes, Counter((r.facility_id, r.dedup_key) for r in rows)


def _rows(states: dict[LedgerKey, LedgerState], outcomes: list[_Outcome]) -> dict[str, str]:
    """Both writes' row parameters: the ledger rows as applied, the inbox rows with their final keys."""
    return {
        "ledger": json.dumps([_ledger_row(state) for state in states.values()]),
        "inbox": jsonwire.dumps([_inbox_row(e) for outcome in outcomes for e in outcome.entries]),
    }


async def _write_locked(
    conn: psycopg.AsyncConnection[Any],
    jobs: list[_Job],
    messages: _Messages,
    keys: list[LedgerKey],
    cache: _LedgerCache,
) -> tuple[list[_Outcome], Counter[tuple[str, str]]]:
    """One transaction in two round trips: BEGIN, claim the message ids and lock the ledger rows, read
    both; then write the rows and the ledger, COMMIT, read what was stored.

    Each round trip is one query of several statements (``_Prepared``: each prepared once per
    connection), its values bound client-side (psycopg quotes them): two waits on the socket per
    transaction. The extended protocol in pipeline mode needed eleven (a send, partial results, the
    syncs), and on a busy loop every wait is a turn of the loop to wait for (measured with
    bench/webhook.py at ~1,000 requests/s: a 0.8 ms transaction took 4 ms)."""
    # Until this transaction knows the rows (and predicts them), a batch must not build on the cache:
    # it would expect what this one is about to change.
    cache.forget(keys)
    statements = ["BEGIN"]
    params: dict[str, Any] = {}
    if messages.keys:
        statements.append(_CLAIM.execute())
        params |= messages.params()
    if keys:
        statements.append(_LOCK.execute())
        params |= {"ledger_facility": [k[0] for k in keys], "ledger_subscription": [k[1] for k in keys]}
    cur = psycopg.AsyncClientCursor(conn)
    try:
        await cur.execute(";".join(statements), params)
        replays = messages.replays
        if messages.keys:
            cur.nextset()
            replays |= messages.committed_before(await cur.fetchall())
        rows = []
        if keys:
            cur.nextset()
            rows = await cur.fetchall()
        states = {(r.facility_id, r.subscription): LedgerState.from_row(r) for r in rows}
        live = [job for index, job in enumerate(jobs) if index not in replays]
        live_outcomes = _apply_ledger(states, live)
        cache.predict(states)  # a batch that starts now may build on these rows (see _LedgerCache)
        await cur.execute(f"{_WRITE_ROWS.execute()}; COMMIT", _rows(states, live_outcomes))
        stored = Counter((r.facility_id, r.dedup_key) for r in await cur.fetchall())
    except BaseException:
        cache.forget(keys)
        if not (conn.broken or conn.closed) and conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.execute("ROLLBACK")
        raise
    finally:
        await cur.close()
    next_live = iter(live_outcomes)
    outcomes = [
        _Outcome(job.entries, replay=True) if index in replays else next(next_live)
        for index, job in enumerate(jobs)
    ]
    return outcomes, stored


@dataclass
class _Messages:
    """The sender message ids of a batch (Standard Webhooks): each key's first job, the latest end of
    its replay window, and the jobs that repeat a key earlier in the same batch."""

    first: dict[tuple[str, str], int]
    expires: dict[tuple[str, str], int]
    replays: set[int]

    @classmethod
    def of(cls, jobs: list[_Job]) -> _Messages:
        found = cls({}, {}, set())
        for index, job in enumerate(jobs):
            intake = job.intake
            if intake is None or intake.message is None:
                continue
            key = (intake.observation.facility_id, intake.message.sha256)
            if key in found.first:
                found.replays.add(index)
            found.first.setdefault(key, index)
            found.expires[key] = max(found.expires.get(key, 0), intake.message.expires_at)
        return found

    @property
    def keys(self) -> list[tuple[str, str]]:
        return sorted(self.first)  # in key order: two transactions never wait on each other in a cycle

    def params(self) -> dict[str, list[Any]]:
        keys = self.keys
        return {
            "facility_id": [k[0] for k in keys],
            "sha256": [k[1] for k in keys],
            "expires": [self.expires[k] for k in keys],
        }

    def committed_before(self, rows: list[Any]) -> set[int]:
        """The first jobs of the keys that ``_CLAIM_MESSAGES`` found already there."""
        return {self.first[(r.facility_id, r.message_sha256)] for r in rows if not r.inserted}


def _apply_ledger(states: dict[tuple[str, str], LedgerState], jobs: list[_Job]) -> list[_Outcome]:
    """Apply each job's observation to the locked ledger rows, in arrival order."""
    now = datetime.now(UTC)
    outcomes: list[_Outcome] = []
    for job in jobs:
        if job.intake is None:
            outcomes.append(_Outcome(job.entries))
            continue
        applied = apply(states[job.intake.observation.key], job.intake.observation, now)
        entries = [
            with_epoch(e, applied.epochs[e.ledger_index]) if e.ledger_index is not None else e
            for e in job.entries
        ]
        outcomes.append(_Outcome(entries, applied.new_gaps, applied.new_epoch))
    return outcomes

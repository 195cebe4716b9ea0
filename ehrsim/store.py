"""The in-memory FHIR store of one facility.

Every change gets a ``lastUpdated`` (integer ms) strictly greater than the facility's previous one, so
that instant doubles as a global change sequence. Per resource type an append-only log of
``(lastUpdated, id)`` entries keeps changes in ``_lastUpdated`` order; an entry is *live* while it is its
resource's latest change and that change is not a deletion. A Fenwick tree over the live flags gives
search totals in O(log n); reads are one dict lookup and return bytes serialized once per change.
"""

from __future__ import annotations

import json
import uuid
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Literal

from ehrsim.instants import Clock, format_instant

ChangeKind = Literal["create", "update", "delete"]


@dataclass(slots=True)
class Record:
    resource_type: str
    id: str
    resource: dict[str, Any]  # the current (or, once deleted, the last) content, with ``meta``
    body: bytes  # ``resource`` serialized
    version: int
    last_updated: int  # ms
    deleted: bool
    log_pos: int  # index of this record's latest entry in its type's log
    version_id: str = ""  # ``meta.versionId``: the version number, or a UUID (Medplum)


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a resource as it was written: ``body`` None for a deletion."""

    version: int
    version_id: str
    last_updated: int  # ms
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    resource_type: str
    id: str
    version: int
    last_updated: int  # ms


class _Fenwick:
    """Prefix sums over an append-only sequence of small integers."""

    __slots__ = ("_tree",)

    def __init__(self) -> None:
        self._tree = [0]  # 1-based; node i covers elements (i - lowbit(i), i]

    def append(self, value: int) -> None:
        i = len(self._tree)
        self._tree.append(value + self.prefix(i - 1) - self.prefix(i - (i & -i)))

    def add(self, pos: int, delta: int) -> None:
        i = pos + 1
        while i < len(self._tree):
            self._tree[i] += delta
            i += i & -i

    def prefix(self, n: int) -> int:
        """Sum of the first ``n`` elements."""
        total = 0
        while n > 0:
            total += self._tree[n]
            n -= n & -n
        return total


class _TypeIndex:
    __slots__ = ("live", "log_ids", "log_ts", "log_versions", "records", "versions")

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.log_ts: list[int] = []
        self.log_ids: list[str] = []
        self.log_versions: list[Version] = []  # the version each log entry wrote
        self.live = _Fenwick()
        # Every version of every resource, oldest first (``_history``, a lagging replica's reads). The
        # bodies are the records' own bytes, so a resource written once costs one list.
        self.versions: dict[str, list[Version]] = {}

    def is_live(self, pos: int) -> bool:
        record = self.records[self.log_ids[pos]]
        return record.log_pos == pos and not record.deleted


class ResourceStore:
    """``meta=False`` stores resources without ``meta`` (Epic); ``uuid_versions`` makes
    ``meta.versionId`` a UUID (Medplum), derived from the namespace, type, id and version."""

    def __init__(
        self,
        clock: Clock,
        resource_types: tuple[str, ...],
        *,
        meta: bool = True,
        uuid_versions: bool = False,
        namespace: str = "",
    ) -> None:
        self._clock = clock
        self._meta = meta
        self._uuid_versions = uuid_versions
        self._namespace = namespace
        self._last_ms = 0
        self._types = {t: _TypeIndex() for t in resource_types}

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def last_change_ms(self) -> int:
        """The ``lastUpdated`` of the latest change (the clock may be behind it: changes are 1 ms apart)."""
        return self._last_ms

    @property
    def resource_types(self) -> tuple[str, ...]:
        return tuple(self._types)

    def get(self, resource_type: str, id_: str) -> Record | None:
        return self._types[resource_type].records.get(id_)

    def records_of(self, resource_type: str) -> list[Record]:
        return list(self._types[resource_type].records.values())

    def records(self) -> list[Record]:
        return [r for index in self._types.values() for r in index.records.values()]

    def put(
        self, resource_type: str, id_: str, content: dict[str, Any], *, significant: bool = True
    ) -> Change:
        """Create or update; ``content`` becomes the resource (its ``meta`` is replaced). An update that
        is not ``significant`` (Oracle: not clinically significant) gets a new version but keeps its
        ``lastUpdated``, so ``_lastUpdated`` searches do not see it."""
        index = self._types[resource_type]
        previous = index.records.get(id_)
        if not significant and previous is not None and not previous.deleted:
            return self._minor_edit(previous, content)
        version = 1 if previous is None else previous.version + 1
        ts = self._next_ms()
        version_id = self._version_id(resource_type, id_, version)
        resource = {"resourceType": resource_type, "id": id_, **content}
        if self._meta:
            resource["meta"] = {"versionId": version_id, "lastUpdated": format_instant(ts)}
        else:
            resource.pop("meta", None)
        body = json.dumps(resource, separators=(",", ":")).encode()
        if previous is not None and not previous.deleted:
            index.live.add(previous.log_pos, -1)
        written = Version(version, version_id, ts, body)
        index.versions.setdefault(id_, []).append(written)
        index.records[id_] = Record(
            resource_type,
            id_,
            resource,
            body,
            version,
            ts,
            deleted=False,
            log_pos=self._log(index, id_, ts, 1, written),
            version_id=version_id,
        )
        kind: ChangeKind = "create" if previous is None or previous.deleted else "update"
        return Change(kind, resource_type, id_, version, ts)

    def _minor_edit(self, record: Record, content: dict[str, Any]) -> Change:
        record.version += 1
        record.version_id = self._version_id(record.resource_type, record.id, record.version)
        resource = {"resourceType": record.resource_type, "id": record.id, **content}
        if self._meta:
            resource["meta"] = {
                "versionId": record.version_id,
                "lastUpdated": format_instant(record.last_updated),
            }
        else:
            resource.pop("meta", None)
        record.resource = resource
        record.body = json.dumps(resource, separators=(",", ":")).encode()
        version = Version(record.version, record.version_id, record.last_updated, record.body)
        self._types[record.resource_type].versions.setdefault(record.id, []).append(version)
        # The change itself happens now (notifications carry this time); the search index does not move.
        return Change("update", record.resource_type, record.id, record.version, self._next_ms())

    def delete(self, resource_type: str, id_: str) -> Change:
        index = self._types[resource_type]
        record = index.records[id_]
        if record.deleted:
            raise ValueError(f"{resource_type}/{id_} is already deleted")
        index.live.add(record.log_pos, -1)
        record.version += 1
        record.version_id = self._version_id(resource_type, id_, record.version)
        record.last_updated = ts = self._next_ms()
        record.deleted = True
        tombstone = Version(record.version, record.version_id, ts, None)
        index.versions.setdefault(id_, []).append(tombstone)
        record.log_pos = self._log(index, id_, ts, 0, tombstone)
        return Change("delete", resource_type, id_, record.version, ts)

    def window(self, resource_type: str, lo: int | None, hi: int | None) -> tuple[int, int]:
        """Log positions ``[start, stop)`` of entries with ``lo <= lastUpdated < hi``."""
        ts = self._types[resource_type].log_ts
        start = 0 if lo is None else bisect_left(ts, lo)
        stop = len(ts) if hi is None else bisect_left(ts, hi)
        return start, max(start, stop)

    def count_live(self, resource_type: str, start: int, stop: int) -> int:
        index = self._types[resource_type]
        stop = min(stop, len(index.log_ts))
        return index.live.prefix(stop) - index.live.prefix(start) if stop > start >= 0 else 0

    def scan(
        self, resource_type: str, start: int, stop: int, pos: int, *, count: int, descending: bool
    ) -> tuple[list[Record], int | None]:
        """Up to ``count`` live records from log position ``pos`` inside ``[start, stop)``, and the
        position to resume from (``None`` when nothing live is left)."""
        index = self._types[resource_type]
        stop = min(stop, len(index.log_ts))
        found: list[Record] = []
        step = -1 if descending else 1
        while start <= pos < stop and len(found) < count:
            if index.is_live(pos):
                found.append(index.records[index.log_ids[pos]])
            pos += step
        remaining = (
            self.count_live(resource_type, start, pos + 1)
            if descending
            else self.count_live(resource_type, pos, stop)
        )
        return found, (pos if remaining else None)

    def _version_id(self, resource_type: str, id_: str, version: int) -> str:
        if not self._uuid_versions:
            return str(version)
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self._namespace}/{resource_type}/{id_}/{version}"))

    def _next_ms(self) -> int:
        self._last_ms = max(int(self._clock() * 1000), self._last_ms + 1)
        return self._last_ms

    @staticmethod
    def _log(index: _TypeIndex, id_: str, ts: int, live: int, version: Version) -> int:
        index.log_ts.append(ts)
        index.log_ids.append(id_)
        index.log_versions.append(version)
        index.live.append(live)
        return len(index.log_ts) - 1

    # -- history -------------------------------------------------------------------------------------

    def versions(self, resource_type: str, id_: str) -> list[Version]:
        """Every version of one resource, oldest first (empty when it never existed)."""
        return list(self._types[resource_type].versions.get(id_, ()))

    def as_of(self, resource_type: str, id_: str, ts: int) -> Version | None:
        """The version that was current at ``ts`` (ms), or None when the resource did not exist yet."""
        found = None
        for version in self._types[resource_type].versions.get(id_, ()):
            if version.last_updated > ts:
                break
            found = version
        return found

    def changes(self, resource_type: str, start: int, stop: int) -> list[tuple[str, Version]]:
        """``(id, version)`` of the log entries at positions ``[start, stop)``, in the log's order."""
        index = self._types[resource_type]
        return list(zip(index.log_ids[start:stop], index.log_versions[start:stop], strict=True))

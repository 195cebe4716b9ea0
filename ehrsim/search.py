"""Search per profile: which parameters a vendor accepts and its errors, the opaque paging state, the
shape of ``next`` links, and the pages themselves.

The whole position of a search travels in its ``next`` link (base64 JSON); only the name of the
parameter that carries it and the shape of the link differ per vendor (``Profile.paging``).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ehrsim.fhir import DATE_PARAMS, operation_outcome
from ehrsim.instants import date_range
from ehrsim.profiles import Paging, Profile
from ehrsim.store import Record, ResourceStore

DEFAULT_COUNT = 50
MAX_COUNT = 1000
EPIC_ERRORS = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"
PAGE_PARAM: dict[Paging, str] = {
    "token": "_page_token",
    "page-context": "-pageContext",
    "getpages": "_getpages",
    "cursor": "cursor",
    "continue": "continue",
    "session": "session",
}
_IGNORED_PARAMS = frozenset({"_format", "_pretty"})

_UNSCOPED_TYPES = frozenset({"Patient", "Medication"})  # no patient to scope them by


class SearchError(Exception):
    """Answer the search with this status and OperationOutcome."""

    def __init__(self, status: int, outcome: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.outcome = outcome


def _invalid(status: int, code: str, diagnostics: str) -> SearchError:
    return SearchError(status, operation_outcome(code, diagnostics))


def _refused(profile: Profile, epic_code: str, text: str, issue: str) -> SearchError:
    """A refusal coded as the profile codes it (Epic's numbers, or the FHIR issue code alone)."""
    if profile.error_codes == "epic":
        return SearchError(400, vendor_outcome(epic_code, text, issue=issue))
    return _invalid(400, issue, text)


def vendor_outcome(
    code: str, text: str, *, severity: str = "fatal", issue: str = "processing"
) -> dict[str, Any]:
    """An OperationOutcome carrying a vendor error code (Epic's 4111, 4112, 4113, 4101...)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": severity,
                "code": issue,
                "details": {"coding": [{"system": EPIC_ERRORS, "code": code, "display": text}], "text": text},
                "diagnostics": text,
            }
        ],
    }


class Search(BaseModel):
    """A search's position."""

    model_config = ConfigDict(frozen=True)

    resource_type: str
    count: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    descending: bool
    total: Annotated[int, Field(ge=0)]
    pos: int
    start: Annotated[int, Field(ge=0)] = 0  # window mode: log positions, fixed at the first page
    stop: Annotated[int, Field(ge=0)] = 0
    ids: tuple[str, ...] | None = None  # list mode (_id): re-resolved per page; pos is an offset
    patient: str | None = None  # list mode (patient): re-resolved per page; pos is an offset
    identifier: str | None = None  # list mode: ``system|value`` or ``value``
    dates: tuple[tuple[str, int | None, int | None], ...] = ()  # list mode: (param, lo, hi) ranges
    lo: int | None = None
    hi: int | None = None
    issued_at: float = 0.0  # when the first page was served (paging sessions expire)
    session_epoch: int = 0  # the facility's paging epoch then (``expire-paging-sessions`` moves it on)

    @property
    def listed(self) -> bool:
        return (
            self.ids is not None
            or self.patient is not None
            or self.identifier is not None
            or bool(self.dates)
        )

    def at(self, pos: int) -> Search:
        return self.model_copy(update={"pos": pos})

    def encode(self) -> str:
        return (
            base64.urlsafe_b64encode(self.model_dump_json(exclude_defaults=True).encode())
            .decode()
            .rstrip("=")
        )

    @classmethod
    def decode(cls, token: str, resource_type: str | None) -> Search:
        try:
            search = cls.model_validate_json(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (ValueError, binascii.Error):  # pydantic's ValidationError is a ValueError
            search = None
        if search is None or resource_type not in (None, search.resource_type) or search.pos < 0:
            raise _invalid(400, "invalid", "invalid paging token")
        return search


def next_link(paging: Paging, base: str, search: Search) -> str:
    token = search.encode()
    param = PAGE_PARAM[paging]
    if paging == "page-context":
        return f"{base}/{search.resource_type}?{param}={token}&-pageDirection=NEXT"
    return f"{base}/{search.resource_type}?{param}={token}"


def continued(
    profile: Profile,
    token: str,
    resource_type: str | None,
    now: float,
    scale: float,
    *,
    session_epoch: int = 0,
) -> Search:
    """The search a ``next`` link continues. Where the profile's paging sessions expire (after
    ``page_session_s``, or once the ``expire-paging-sessions`` fault moved the facility's
    ``session_epoch`` past the search's), an old one is refused as Epic refuses it: 4113. (HAPI's held
    searches expire in ``SearchCache``.)"""
    search = Search.decode(token, resource_type)
    if profile.page_session_s is None:
        return search
    if now - search.issued_at > profile.page_session_s * scale or search.session_epoch < session_epoch:
        raise _refused(profile, "4113", "The paging session has expired", "expired")
    return search


@dataclass(frozen=True, slots=True)
class CachedSearch:
    """HAPI's paging: the ids a search matched when it ran, held by the server under a search id and
    paged by offset (``{base}?_getpages={id}&_getpagesoffset={n}&_count={m}``)."""

    resource_type: str
    ids: tuple[str, ...]
    count: int
    issued_at: float
    session_epoch: int


class SearchCache:
    """The searches a HAPI-style facility holds, bounded: past ``capacity`` the oldest are forgotten, and
    their ``_getpages`` links answer 410 as HAPI's do once its cache let them go."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._searches: OrderedDict[str, CachedSearch] = OrderedDict()

    def hold(self, store: ResourceStore, search: Search) -> tuple[str, CachedSearch]:
        cached = CachedSearch(
            search.resource_type,
            _matching_ids(store, search),
            search.count,
            search.issued_at,
            search.session_epoch,
        )
        search_id = str(uuid.uuid4())
        self._searches[search_id] = cached
        while len(self._searches) > self._capacity:
            self._searches.popitem(last=False)
        return search_id, cached

    def get(
        self, profile: Profile, search_id: str, now: float, scale: float, *, session_epoch: int
    ) -> CachedSearch:
        cached = self._searches.get(search_id)
        expired = cached is None or cached.session_epoch < session_epoch
        if cached is not None and profile.page_session_s is not None:
            expired = expired or now - cached.issued_at > profile.page_session_s * scale
        if cached is None or expired:
            self._searches.pop(search_id, None)
            raise _invalid(410, "processing", "Search ID does not exist and may have expired")
        return cached


def cached_page(
    store: ResourceStore, cached: CachedSearch, offset: int, count: int
) -> tuple[list[Record], int | None]:
    """The live records at ``[offset, offset + count)`` of a held search, and the next offset (``None``
    on the last page). A resource deleted since the search ran is left out, as HAPI leaves it out."""
    ids = cached.ids[offset : offset + count]
    records = [
        r for r in (store.get(cached.resource_type, i) for i in ids) if r is not None and not r.deleted
    ]
    end = offset + count
    return records, (end if end < len(cached.ids) and count > 0 else None)


def getpages_link(base: str, search_id: str, offset: int, count: int) -> str:
    return f"{base}?_getpages={search_id}&_getpagesoffset={offset}&_count={count}&_bundletype=searchset"


def _matching_ids(store: ResourceStore, search: Search) -> tuple[str, ...]:
    if search.listed:
        return tuple(r.id for r in listed(store, search))
    records, _ = store.scan(
        search.resource_type,
        search.start,
        search.stop,
        search.pos,
        count=search.total,
        descending=search.descending,
    )
    return tuple(r.id for r in records)


@dataclass(slots=True)
class _Query:
    count: int
    descending: bool = False
    ids: tuple[str, ...] | None = None
    patients: list[str] = field(default_factory=list)
    last_updated: list[str] = field(default_factory=list)
    identifier: str | None = None
    dates: list[tuple[str, str]] = field(default_factory=list)  # (param, value)


def new_search(
    profile: Profile,
    store: ResourceStore,
    resource_type: str,
    params: Iterable[tuple[str, str]],
    now: float,
    *,
    session_epoch: int = 0,
) -> Search:
    query = _parse(profile, resource_type, params)
    ids, patients = query.ids, query.patients
    if profile.patient_required and resource_type not in _UNSCOPED_TYPES and ids is None:
        if not patients:
            raise _refused(profile, "4111", "Required element patient is missing", "required")
        if len(patients) > 1:
            raise _refused(profile, "4112", "Only one patient may be searched at a time", "processing")
    if len(patients) > 1:
        raise _invalid(400, "not-supported", "one patient per search")
    lo: int | None = None
    hi: int | None = None
    if query.last_updated and query.dates and not profile.last_updated_with_dates:
        raise _invalid(400, "invalid", f"{profile.last_updated_param} cannot be combined with a date")
    for value in query.last_updated:
        _check_last_updated(profile, resource_type, value, patients, len(query.last_updated))
        lo, hi = _narrow(lo, hi, value, profile.last_updated_param)
    dates: list[tuple[str, int | None, int | None]] = []
    for name, value in query.dates:
        dates.append((name, *_narrow(None, None, value, name)))
    common: dict[str, Any] = {
        "resource_type": resource_type,
        "count": query.count,
        "descending": query.descending,
        "issued_at": now,
        "session_epoch": session_epoch,
        "lo": lo,
        "hi": hi,
    }
    search = Search(
        total=0,
        pos=0,
        ids=ids,
        patient=patients[0] if patients else None,
        identifier=query.identifier,
        dates=tuple(dates),
        **common,
    )
    if search.listed:
        search = search.model_copy(update={"total": len(listed(store, search))})
    else:
        start, stop = store.window(resource_type, lo, hi)
        search = Search(
            total=store.count_live(resource_type, start, stop),
            pos=stop - 1 if query.descending else start,
            start=start,
            stop=stop,
            **common,
        )
    cap = profile.patient_search_max
    if cap is not None and resource_type == "Patient" and search.total > cap:
        raise _refused(profile, "4127", "The search matched too many patients", "too-costly")
    return search


def _parse(profile: Profile, resource_type: str, params: Iterable[tuple[str, str]]) -> _Query:
    query = _Query(count=min(profile.default_count, profile.max_count))
    date_params = DATE_PARAMS.get(resource_type, {})
    for name, value in params:
        if name == profile.last_updated_param:
            query.last_updated.append(value)
        elif name in date_params:
            query.dates.append((name, value))
        elif name == "identifier":
            query.identifier = value
        elif name in ("patient", "subject") and resource_type not in _UNSCOPED_TYPES:
            query.patients += [v.removeprefix("Patient/") for v in value.split(",")]
        elif name == "_id":
            wanted = tuple(v for v in value.split(",") if v)
            query.ids = wanted if query.ids is None else tuple(v for v in query.ids if v in wanted)
        elif name == "_count":
            if not value.isdigit():
                raise _invalid(400, "invalid", "_count must be a non-negative integer")
            query.count = min(int(value), profile.max_count, MAX_COUNT)
        elif name == "_sort":
            if value not in ("_lastUpdated", "-_lastUpdated"):
                raise _invalid(
                    400, "not-supported", "only _sort=_lastUpdated and -_lastUpdated are supported"
                )
            query.descending = value.startswith("-")
        elif name not in _IGNORED_PARAMS:
            raise _invalid(400, "not-supported", f"search parameter {name} is not supported")
    return query


def page(store: ResourceStore, search: Search) -> tuple[list[Record], Search | None]:
    """One page, and the search positioned after it (``None`` on the last page)."""
    if search.count == 0:
        return [], None
    if search.listed:
        matches = listed(store, search)
        end = search.pos + search.count
        return matches[search.pos : end], (search.at(end) if end < len(matches) else None)
    records, pos = store.scan(
        search.resource_type,
        search.start,
        search.stop,
        search.pos,
        count=search.count,
        descending=search.descending,
    )
    return records, None if pos is None else search.at(pos)


def listed(store: ResourceStore, search: Search) -> list[Record]:
    """The live resources of a list-mode search inside its ``_lastUpdated`` range, sorted."""
    lo, hi = search.lo, search.hi
    if search.ids is not None:
        candidates = [r for r in (store.get(search.resource_type, i) for i in search.ids) if r is not None]
    else:
        candidates = store.records_of(search.resource_type)
    if search.patient is not None:
        reference = f"Patient/{search.patient}"
        candidates = [r for r in candidates if _patient_of(r.resource) == reference]
    if search.identifier is not None:
        candidates = [r for r in candidates if _has_identifier(r.resource, search.identifier)]
    for name, date_lo, date_hi in search.dates:
        path = DATE_PARAMS[search.resource_type][name]
        candidates = [r for r in candidates if _within(_element(r.resource, path), date_lo, date_hi)]
    found = {
        r.id: r
        for r in candidates
        if not r.deleted and (lo is None or r.last_updated >= lo) and (hi is None or r.last_updated < hi)
    }
    return sorted(found.values(), key=lambda r: r.last_updated, reverse=search.descending)


def compartment_patient(resource_type: str, resource: dict[str, Any]) -> str | None:
    """The id of the Patient whose compartment a resource is in, as ``patient=`` searches find it: a
    Patient's own id; for a type searched by patient, the Patient its ``subject`` / ``patient`` names;
    ``None`` for a type no patient scopes (``_UNSCOPED_TYPES`` but Patient: Medication)."""
    if resource_type == "Patient":
        return str(resource.get("id"))
    if resource_type in _UNSCOPED_TYPES:
        return None
    reference = _patient_of(resource)
    if reference is None or not reference.startswith("Patient/"):
        return None
    return reference.removeprefix("Patient/")


def _patient_of(resource: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


def _has_identifier(resource: dict[str, Any], wanted: str) -> bool:
    """FHIR token search: ``system|value`` or ``value`` alone; values compared trimmed (Epic pads them)."""
    system, _, value = wanted.rpartition("|") if "|" in wanted else (None, "", wanted)
    for identifier in resource.get("identifier") or []:
        if not isinstance(identifier, dict) or str(identifier.get("value", "")).strip() != value.strip():
            continue
        if system is None or identifier.get("system") == system:
            return True
    return False


def _element(resource: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = resource
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _within(value: Any, lo: int | None, hi: int | None) -> bool:
    """Whether a date/dateTime element starts inside ``[lo, hi)``; a missing or unreadable one never does."""
    if not isinstance(value, str):
        return False
    try:
        start = date_range(value)[0]
    except ValueError:
        return False
    return (lo is None or start >= lo) and (hi is None or start < hi)


def _check_last_updated(
    profile: Profile, resource_type: str, value: str, patients: list[str], occurrences: int
) -> None:
    scope = profile.last_updated
    unscoped = resource_type in _UNSCOPED_TYPES
    if (
        scope == "none"
        or (scope == "types" and resource_type not in profile.last_updated_types)
        or (scope == "patient" and unscoped and resource_type not in profile.last_updated_types)
    ):
        raise _invalid(400, "not-supported", f"_lastUpdated is not supported on {resource_type}")
    if scope == "patient" and not unscoped and not patients:
        raise _invalid(400, "invalid", "_lastUpdated can only be used together with patient")
    if scope == "patient" and occurrences > 2:
        raise _invalid(400, "invalid", "at most two _lastUpdated values")
    if profile.last_updated_day_precision and len(value.lstrip("abcdefghijklmnopqrstuvwxyz")) > 10:
        raise _invalid(400, "invalid", "_lastUpdated supports day precision only (YYYY-MM-DD)")


def _narrow(lo: int | None, hi: int | None, value: str, name: str) -> tuple[int | None, int | None]:
    """Intersect ``[lo, hi)`` with one date condition of parameter ``name`` (prefix eq/gt/ge/lt/le/sa/eb)."""
    prefix, rest = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    try:
        start, end = date_range(rest)
    except ValueError as exc:
        raise _invalid(400, "invalid", f"{name}: {exc}") from None
    bounds: dict[str, tuple[int | None, int | None]] = {
        "eq": (start, end),
        "gt": (end, None),
        "sa": (end, None),
        "ge": (start, None),
        "lt": (None, start),
        "eb": (None, start),
        "le": (None, end),
    }
    if prefix not in bounds:
        raise _invalid(400, "not-supported", f"{name} prefix {prefix} is not supported")
    new_lo, new_hi = bounds[prefix]
    if new_lo is not None:
        lo = new_lo if lo is None else max(lo, new_lo)
    if new_hi is not None:
        hi = new_hi if hi is None else min(hi, new_hi)
    return lo, hi

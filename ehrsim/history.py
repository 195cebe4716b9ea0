"""``_history`` of a type or an instance (HAPI, Medplum): every version a resource had, deletions
included, as ``history`` Bundle entries (``request`` says what happened, ``response`` its version).

Type-level history is newest first, windowed by ``_since`` (inclusive) and a snapshot instant taken by
the first page, so the pages of one traversal do not shift while changes go on; ``next`` carries the
window in ``_page_token`` (``{since}.{until}.{offset}`` in ms).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ehrsim.fhir import operation_outcome
from ehrsim.instants import date_range, format_instant
from ehrsim.profiles import Profile
from ehrsim.search import SearchError
from ehrsim.store import Version

PAGE_TOKEN = "_page_token"  # noqa: S105 - a query parameter's name, no secret


@dataclass(frozen=True)
class HistoryWindow:
    since_ms: int | None
    until_ms: int
    offset: int
    count: int


def _invalid(diagnostics: str) -> SearchError:
    return SearchError(400, operation_outcome("invalid", diagnostics))


def history_window(params: Mapping[str, str], profile: Profile, now_ms: int) -> HistoryWindow:
    """The window a request asks for, up to ``now_ms`` on a first page. Raises ``SearchError`` (400) for
    a bad ``_since``/``_count``/``_page_token``."""
    raw_count = params.get("_count", str(profile.default_count))
    if not raw_count.isdigit() or int(raw_count) == 0:
        raise _invalid("_count must be a positive integer")
    count = min(int(raw_count), profile.max_count)
    token = params.get(PAGE_TOKEN)
    if token is not None:
        parts = token.split(".")
        if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
            raise _invalid("unknown _page_token")
        since, until, offset = (int(p) for p in parts)
        return HistoryWindow(None if since < 0 else since, until, offset, count)
    since_ms = None
    if "_since" in params:
        try:
            since_ms = date_range(params["_since"])[0]
        except ValueError:
            raise _invalid("_since must be a FHIR instant") from None
    return HistoryWindow(since_ms, now_ms, 0, count)


def history_next(base: str, resource_type: str, window: HistoryWindow, given: int) -> str:
    since = -1 if window.since_ms is None else window.since_ms
    token = f"{since}.{window.until_ms}.{window.offset + given}"
    return f"{base}/{resource_type}/_history?{urlencode({PAGE_TOKEN: token, '_count': window.count})}"


def history_entry(base: str, resource_type: str, id_: str, version: Version) -> dict[str, Any]:
    response = {
        "etag": f'W/"{version.version_id}"',
        "lastModified": format_instant(version.last_updated),
    }
    entry: dict[str, Any] = {"fullUrl": f"{base}/{resource_type}/{id_}"}
    if version.body is None:
        # As HAPI lists a deleted version: no resource and no time of its own (the Bundle's
        # ``meta.lastUpdated`` says when the history was read).
        entry["request"] = {"method": "DELETE", "url": f"{resource_type}/{id_}"}
        entry["response"] = {"status": "204 No Content", "etag": response["etag"]}
        return entry
    # Parsed back from the stored bytes: the body is the version as it was served then.
    entry["resource"] = json.loads(version.body)
    if version.version == 1:
        entry["request"] = {"method": "POST", "url": resource_type}
        entry["response"] = {"status": "201 Created", **response}
    else:
        entry["request"] = {"method": "PUT", "url": f"{resource_type}/{id_}"}
        entry["response"] = {"status": "200 OK", **response}
    return entry

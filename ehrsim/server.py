"""The ASGI app: every facility under ``/{facility}``, plus the unauthenticated ``/_admin`` API.

Plain Starlette (no FastAPI dependency injection or validation layer) keeps the per-request overhead
low for benchmarks. All state lives in memory and is only touched from the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ehrsim.auth import AccessToken, TokenError
from ehrsim.bulk import ExportBusy, Exports
from ehrsim.config import SimConfig
from ehrsim.facility import Facility
from ehrsim.faults import FaultUpdate
from ehrsim.fhir import (
    FHIR_JSON,
    capability_statement,
    export_levels,
    operation_outcome,
    smart_configuration,
)
from ehrsim.history import history_entry, history_next, history_window
from ehrsim.instants import Clock, date_range, format_instant
from ehrsim.notify import event_entries, events_status, status_parameters
from ehrsim.profiles import SubscriptionOperation
from ehrsim.search import (
    DEFAULT_COUNT,
    MAX_COUNT,
    PAGE_PARAM,
    CachedSearch,
    Search,
    SearchError,
    cached_page,
    continued,
    getpages_link,
    new_search,
    next_link,
    page,
    vendor_outcome,
)
from ehrsim.store import Record, Version
from ehrsim.subscriptions import InvalidSubscription, Subscription, parse_resource

__all__ = ["DEFAULT_COUNT", "DEFAULT_PUBLIC_BASE_URL", "MAX_COUNT", "create_app"]

DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8090"
MAX_ACTIVITY = 1_000_000
NDJSON = "application/fhir+ndjson"
_WWW_AUTHENTICATE = (
    'Bearer realm="ehrsim", error="invalid_token", '
    'error_description="Token has expired or signature is invalid"'
)


class _Problem(Exception):
    """Abort a request with this response."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _json(
    body: Any, status: int = 200, media_type: str = "application/json", headers: dict[str, str] | None = None
) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, headers, media_type)


def _fhir(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return _json(body, status, FHIR_JSON, headers)


def _outcome(status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> _Problem:
    return _Problem(_fhir(operation_outcome(code, diagnostics), status, headers))


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


class _Api:
    def __init__(self, facilities: dict[str, Facility], clock: Clock) -> None:
        self.facilities = facilities
        self.clock = clock
        self.exports = {
            fid: Exports(
                f.store,
                f.profile.bulk_polls_until_done,
                list_deleted=f.profile.bulk_deleted,
                file_resources=f.profile.bulk_file_resources,
            )
            for fid, f in facilities.items()
        }
        self.outbound: httpx.AsyncClient | None = None  # webhooks and JWKS fetches, set by the lifespan

    # -- helpers -------------------------------------------------------------------------------------

    def _facility(self, request: Request) -> Facility:
        facility = self.facilities.get(request.path_params["fac"])
        if facility is None:
            raise _outcome(404, "not-found", "unknown facility")
        return facility

    async def _fhir_request(self, request: Request) -> Facility:
        """The facility of a FHIR data request, after the faults that apply to every such request."""
        facility = self._facility(request)
        faults = facility.faults
        if faults.config.slow_s:
            faults.count("slow")
            await asyncio.sleep(faults.config.slow_s)  # simulated latency, not synchronization
        fault = faults.http_fault(self.clock())
        facility.traffic.record("fhir", fault[0] if fault is not None else None)
        if fault is not None:
            status, headers = fault
            if status == 429 and facility.profile.ratelimit_header:
                retry_after = faults.config.throttle.retry_after_s
                headers = {**headers, "RateLimit": f"limit=600, remaining=0, reset={retry_after}"}
            code = "throttled" if status == 429 else "transient"
            raise _outcome(status, code, "injected fault", headers)
        return facility

    def _authorize(self, request: Request, facility: Facility, resource_type: str, perm: str) -> AccessToken:
        token = facility.auth.check(request.headers.get("authorization"))
        if token is None:
            raise _outcome(
                401,
                "login",
                "Token has expired or signature is invalid",
                {"WWW-Authenticate": _WWW_AUTHENTICATE},
            )
        known = (
            resource_type in facility.store.resource_types
            or (resource_type == "Subscription" and facility.supports_subscriptions)
            or (resource_type == "Group" and facility.profile.group_read)
        )
        if not known:
            raise _outcome(404, "not-supported", f"resource type {resource_type} is not supported")
        if not token.allows(resource_type, perm):
            raise _outcome(403, "forbidden", f"the token's scopes do not allow this on {resource_type}")
        return token

    @staticmethod
    def _check_broken(facility: Facility, resource_type: str, ids: Iterable[str]) -> None:
        broken = facility.faults.config.broken_resources
        if broken and any(f"{resource_type}/{id_}" in broken for id_ in ids):
            facility.faults.count("broken_resource")
            raise _outcome(500, "exception", "internal error")

    # -- SMART and metadata ----------------------------------------------------------------------------

    async def smart_configuration(self, request: Request) -> Response:
        facility = self._facility(request)
        return _json(smart_configuration(f"{_origin(request)}/{facility.id}/oauth2/token", facility.profile))

    async def metadata(self, request: Request) -> Response:
        facility = self._facility(request)
        origin = _origin(request)
        return _fhir(
            capability_statement(
                f"{origin}/{facility.id}/fhir",
                f"{origin}/{facility.id}/oauth2/token",
                facility.profile,
                format_instant(int(self.clock() * 1000)),
            )
        )

    async def token(self, request: Request) -> Response:
        facility = self.facilities.get(request.path_params["fac"])
        if facility is None:
            return _json({"error": "invalid_request", "error_description": "unknown facility"}, 404)
        fault = facility.faults.http_fault(self.clock())
        if fault is None and facility.faults.config.credentials_revoked:
            facility.faults.count("credentials_revoked")
            facility.traffic.record("token", 401)
            return _json(
                {"error": "invalid_client", "error_description": "client authentication failed"}, 401
            )
        facility.traffic.record("token", fault[0] if fault is not None else None)
        if fault is not None:
            status, headers = fault
            error = "rate_limited" if status == 429 else "temporarily_unavailable"
            return _json({"error": error, "error_description": "injected fault"}, status, headers=headers)
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        try:
            answer = await facility.auth.issue(
                form,
                f"{_origin(request)}/{facility.id}/oauth2/token",
                authorization=request.headers.get("authorization"),
                fetch_jwks=self._fetch_jwks,
            )
        except TokenError as exc:
            if exc.bare:
                return Response(b"", exc.status)
            body = {"error": exc.error, "error_description": exc.description}
            return _json(body, exc.status, headers=exc.headers)
        return _json(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def _fetch_jwks(self, url: str) -> dict[str, Any]:
        assert self.outbound is not None  # the lifespan is running while requests are served
        response = await self.outbound.get(url, timeout=5.0)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    # -- FHIR read and search --------------------------------------------------------------------------

    async def read(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        resource_type, id_ = request.path_params["type"], request.path_params["id"]
        if resource_type == "Subscription":
            self._authorize(request, facility, resource_type, "r")
            return _fhir(self._subscription(facility, id_).resource())
        self._authorize(request, facility, resource_type, "r")
        self._check_broken(facility, resource_type, (id_,))
        record = facility.store.get(resource_type, id_)
        if record is None:
            raise _outcome(404, "not-found", f"{resource_type}/{id_} is not known")
        served = Version(record.version, record.version_id, record.last_updated, None)
        if not record.deleted:
            served = dataclasses.replace(served, body=record.body)
        lag_s = facility.faults.config.replica_lag_s
        if lag_s:
            # A lagging replica answers: what was current lag_s ago (nothing, when it did not exist yet).
            lagging = facility.store.as_of(resource_type, id_, int((self.clock() - lag_s) * 1000))
            if lagging != served:
                facility.faults.count("replica_lag")
                if lagging is None:
                    raise _outcome(404, "not-found", f"{resource_type}/{id_} is not known")
                served = lagging
        if served.body is None:
            raise _outcome(410, "deleted", f"{resource_type}/{id_} has been deleted")
        headers = {"Last-Modified": formatdate(served.last_updated / 1000, usegmt=True)}
        if facility.profile.meta:
            headers["ETag"] = f'W/"{served.version_id}"'
        return Response(served.body, headers=headers, media_type=FHIR_JSON)

    # -- Groups ------------------------------------------------------------------------------------

    async def group_read(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        self._authorize(request, facility, "Group", "r")
        group = facility.groups.get(request.path_params["id"])
        if group is None:
            raise _outcome(404, "not-found", "Group is not known")
        return _fhir(facility.groups.resource(group))

    async def group_search(self, request: Request) -> Response:
        """``GET Group`` (optionally ``_id``): every Group, on one page."""
        facility = await self._fhir_request(request)
        self._authorize(request, facility, "Group", "s")
        params = request.query_params
        unknown = sorted(set(params) - {"_id", "_count"})
        if unknown:
            raise _outcome(400, "not-supported", f"Group search parameter {unknown[0]} is not supported")
        wanted = set(params["_id"].split(",")) if "_id" in params else None
        groups = [g for g in facility.groups.all() if wanted is None or g.id in wanted]
        entries = [{"resource": facility.groups.resource(g), "search": {"mode": "match"}} for g in groups]
        return _fhir(_bundle("searchset", entries))

    # -- history -----------------------------------------------------------------------------------

    async def type_history(self, request: Request) -> Response:
        """``{type}/_history?_since=&_count=``: every version and deletion of the type since the instant,
        newest first, paged over a snapshot taken by the first page (``_page_token``)."""
        facility = await self._fhir_request(request)
        resource_type = request.path_params["type"]
        if "type" not in facility.profile.history:
            raise _outcome(404, "not-supported", "type-level _history is not supported")
        self._authorize(request, facility, resource_type, "s")
        params = request.query_params
        try:
            now_ms = max(int(self.clock() * 1000), facility.store.last_change_ms)
            window = history_window(params, facility.profile, now_ms)
        except SearchError as exc:
            raise _Problem(_fhir(exc.outcome, exc.status)) from None
        start, stop = facility.store.window(resource_type, window.since_ms, window.until_ms + 1)
        changes = facility.store.changes(resource_type, start, stop)[::-1]  # newest first
        page_changes = changes[window.offset : window.offset + window.count]
        base = self._base(request, facility)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            # When the history was read (the traversal's snapshot), as HAPI stamps its bundles.
            "meta": {"lastUpdated": format_instant(window.until_ms)},
            "type": "history",
            "total": len(changes),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [history_entry(base, resource_type, id_, v) for id_, v in page_changes],
        }
        if window.offset + window.count < len(changes):
            bundle["link"].append(
                {"relation": "next", "url": history_next(base, resource_type, window, len(page_changes))}
            )
        return _fhir(bundle)

    async def instance_history(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        resource_type, id_ = request.path_params["type"], request.path_params["id"]
        if "instance" not in facility.profile.history:
            raise _outcome(404, "not-supported", "instance _history is not supported")
        self._authorize(request, facility, resource_type, "r")
        versions = facility.store.versions(resource_type, id_)
        if not versions:
            raise _outcome(404, "not-found", f"{resource_type}/{id_} is not known")
        base = self._base(request, facility)
        entries = [history_entry(base, resource_type, id_, v) for v in reversed(versions)]
        return _fhir({"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries})

    async def search_base(self, request: Request) -> Response:
        """``GET {base}?_getpages=...``: HAPI's next links name no type."""
        facility = await self._fhir_request(request)
        search_id = request.query_params.get("_getpages")
        if facility.profile.paging != "getpages" or search_id is None:
            raise _outcome(400, "not-supported", "system-level search is not supported")
        return self._held_page(request, facility, search_id)

    async def search(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        resource_type = request.path_params["type"]
        self._authorize(request, facility, resource_type, "s")
        if resource_type == "Subscription":
            resources = [s.resource() for s in self._subscriptions(facility).values()]
            return _fhir(
                _bundle("searchset", [{"resource": r, "search": {"mode": "match"}} for r in resources])
            )
        paging = facility.profile.paging
        token = request.query_params.get(PAGE_PARAM[paging])
        if token is not None and paging == "getpages":
            return self._held_page(request, facility, token)
        if token is not None:
            search = self._continued(facility, token, resource_type)
        else:
            try:
                search = new_search(
                    facility.profile,
                    facility.store,
                    resource_type,
                    request.query_params.multi_items(),
                    self.clock(),
                    session_epoch=facility.paging_epoch,
                )
            except SearchError as exc:
                raise _Problem(_fhir(exc.outcome, exc.status)) from None
        if paging == "getpages":
            search_id, held = facility.searches.hold(facility.store, search)
            return self._held_page(request, facility, search_id, held=held)
        records, next_search = page(facility.store, search)
        next_url = None
        if next_search is not None:
            next_url = next_link(paging, self._base(request, facility), next_search)
        total = search.total
        if token is None and next_search is None and facility.faults.config.replica_lag_s:
            lagging = self._lagging_batch_read(facility, resource_type, request.query_params.multi_items())
            if lagging is not None:
                records, total = lagging, len(lagging)
        return self._search_page(
            request, facility, resource_type, total=total, records=records, next_url=next_url
        )

    def _lagging_batch_read(
        self, facility: Facility, resource_type: str, query: list[tuple[str, str]]
    ) -> list[Record] | None:
        """A batch read (``{Type}?_id=a,b,c``, nothing else but ``_count``) is a read: with the
        ``replica_lag_s`` fault the replica answers it too, each resource as it was ``lag_s`` ago (an
        older version, absent when created since, present when deleted since). None: not a batch read."""
        if not query or {name for name, _ in query} - {"_id", "_count"}:
            return None
        ids = [i for name, value in query if name == "_id" for i in value.split(",") if i]
        as_of = int((self.clock() - facility.faults.config.replica_lag_s) * 1000)
        served = []
        for id_ in dict.fromkeys(ids):
            record = facility.store.get(resource_type, id_)
            if record is None:
                continue
            version = facility.store.as_of(resource_type, id_, as_of)
            if version is None or version.version != record.version:
                facility.faults.count("replica_lag")
            if version is None or version.body is None:
                continue
            served.append(
                dataclasses.replace(
                    record,
                    body=version.body,
                    version=version.version,
                    version_id=version.version_id,
                    last_updated=version.last_updated,
                    deleted=False,
                )
            )
        return served

    def _held_page(
        self, request: Request, facility: Facility, search_id: str, *, held: CachedSearch | None = None
    ) -> Response:
        """A page of a search the server holds (HAPI): at ``_getpagesoffset``, ``_count`` long."""
        params = request.query_params
        if held is None:
            try:
                held = facility.searches.get(
                    facility.profile,
                    search_id,
                    self.clock(),
                    facility.time_scale,
                    session_epoch=facility.paging_epoch,
                )
            except SearchError as exc:
                raise _Problem(_fhir(exc.outcome, exc.status)) from None
            self._authorize(request, facility, held.resource_type, "s")
            offset, count = params.get("_getpagesoffset", "0"), params.get("_count", str(held.count))
            if not (offset.isdigit() and count.isdigit()):
                raise _outcome(400, "invalid", "_getpagesoffset and _count must be non-negative integers")
            start, size = int(offset), min(int(count), facility.profile.max_count)
        else:
            start, size = 0, held.count
        records, next_offset = cached_page(facility.store, held, start, size)
        next_url = None
        if next_offset is not None:
            next_url = getpages_link(self._base(request, facility), search_id, next_offset, size)
        return self._search_page(
            request, facility, held.resource_type, total=len(held.ids), records=records, next_url=next_url
        )

    @staticmethod
    def _base(request: Request, facility: Facility) -> str:
        return f"{_origin(request)}/{facility.id}/fhir"

    def _continued(self, facility: Facility, token: str, resource_type: str | None) -> Search:
        try:
            return continued(
                facility.profile,
                token,
                resource_type,
                self.clock(),
                facility.time_scale,
                session_epoch=facility.paging_epoch,
            )
        except SearchError as exc:
            raise _Problem(_fhir(exc.outcome, exc.status)) from None

    def _search_page(
        self,
        request: Request,
        facility: Facility,
        resource_type: str,
        *,
        total: int,
        records: list[Record],
        next_url: str | None,
    ) -> Response:
        self._check_broken(facility, resource_type, (r.id for r in records))
        base = self._base(request, facility)
        header: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": str(request.url)}],
        }
        if next_url is not None:
            header["link"].append({"relation": "next", "url": next_url})
        parts = [
            b'{"fullUrl":"%s/%s/%s","resource":%s,"search":{"mode":"match"}}'
            % (base.encode(), resource_type.encode(), r.id.encode(), r.body)
            for r in records
        ]
        if facility.profile.outcome_entries:
            outcome = (
                vendor_outcome(
                    "4119", "Some data may not be available", severity="warning", issue="informational"
                )
                if records
                else vendor_outcome(
                    "4101",
                    "Resource request returns no results.",
                    severity="information",
                    issue="informational",
                )
            )
            parts.append(
                json.dumps(
                    {"resource": outcome, "search": {"mode": "outcome"}}, separators=(",", ":")
                ).encode()
            )
        head = json.dumps(header, separators=(",", ":")).encode()
        if parts:
            head = head[:-1] + b',"entry":[' + b",".join(parts) + b"]}"
        return Response(head, media_type=FHIR_JSON)

    # -- Subscriptions ---------------------------------------------------------------------------------

    @staticmethod
    def _subscriptions(facility: Facility) -> dict[str, Subscription]:
        return facility.sender.subscriptions if facility.sender is not None else {}

    def _subscription(self, facility: Facility, id_: str) -> Subscription:
        subscription = self._subscriptions(facility).get(id_)
        if subscription is None:
            raise _outcome(404, "not-found", f"Subscription/{id_} is not known")
        return subscription

    async def _subscription_body(self, request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise _outcome(400, "structure", "the body is not JSON") from None

    async def create_subscription(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        if request.path_params["type"] != "Subscription":
            raise _outcome(405, "not-supported", "this server only creates Subscription resources")
        self._authorize(request, facility, "Subscription", "c")
        try:
            requested = parse_resource(await self._subscription_body(request))
        except InvalidSubscription as exc:
            raise _outcome(400, "invalid", str(exc)) from None
        if facility.profile.one_subscription_per_topic and any(
            s.topic == requested.topic for s in self._subscriptions(facility).values()
        ):
            raise _outcome(409, "duplicate", "there is already a subscription to this topic")
        subscription = facility.create_subscription(requested)
        location = f"{_origin(request)}/{facility.id}/fhir/Subscription/{subscription.id}"
        return _fhir(subscription.resource(), 201, {"Location": location})

    async def update_subscription(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        if request.path_params["type"] != "Subscription":
            raise _outcome(405, "not-supported", "this server only updates Subscription resources")
        self._authorize(request, facility, "Subscription", "u")
        current = self._subscription(facility, request.path_params["id"])
        try:
            requested = parse_resource(await self._subscription_body(request))
        except InvalidSubscription as exc:
            raise _outcome(400, "invalid", str(exc)) from None
        return _fhir(facility.update_subscription(current, requested).resource())

    async def delete_subscription(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        if request.path_params["type"] != "Subscription":
            raise _outcome(405, "not-supported", "this server only deletes Subscription resources")
        self._authorize(request, facility, "Subscription", "d")
        if not facility.delete_subscription(request.path_params["id"]):
            raise _outcome(404, "not-found", "no such Subscription")
        return Response(status_code=204)

    @staticmethod
    def _operation(facility: Facility, name: SubscriptionOperation) -> None:
        if name not in facility.profile.subscription_operations:
            raise _outcome(404, "not-supported", f"${name} is not supported")

    async def subscription_status(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        self._authorize(request, facility, "Subscription", "r")
        self._operation(facility, "status")
        subscription = self._subscription(facility, request.path_params["id"])
        base = f"{_origin(request)}/{facility.id}/fhir"
        status = status_parameters(subscription.target(), "query-status", base, [])
        return _fhir(_bundle("searchset", [{"resource": status, "search": {"mode": "match"}}]))

    async def subscription_events(self, request: Request) -> Response:
        """``$events``: the retained events in ``[eventsSinceNumber, eventsUntilNumber]``; older ones are
        gone (limited retention), and the answer says which numbers it holds, in the subscription's shape
        (R5: a ``subscription-notification`` Bundle; else a ``history`` Bundle of backport Parameters)."""
        facility = await self._fhir_request(request)
        self._authorize(request, facility, "Subscription", "r")
        self._operation(facility, "events")
        subscription = self._subscription(facility, request.path_params["id"])
        params = request.query_params
        try:
            since = int(params.get("eventsSinceNumber", "1"))
            until = int(params.get("eventsUntilNumber", str(subscription.events_since_start)))
        except ValueError:
            raise _outcome(400, "invalid", "event numbers must be integers") from None
        events = [e for e in subscription.retained if since <= e.number <= until]
        target = subscription.target()
        content = params.get("content")
        if content in ("empty", "id-only", "full-resource"):
            target = dataclasses.replace(target, payload=content)
        base = f"{_origin(request)}/{facility.id}/fhir"
        status = events_status(target, base, events)
        entries = [{"resource": status}, *event_entries(target, events, base)]
        kind = "subscription-notification" if target.style == "r5" else "history"
        return _fhir(_bundle(kind, entries))

    # -- Bulk data -----------------------------------------------------------------------------------

    async def export(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        if "group" in request.path_params:
            level = "group"
        elif request.url.path.endswith("/Patient/$export"):
            level = "patient"
        else:
            level = "system"
        if level not in export_levels(facility.profile):
            raise _outcome(404, "not-supported", f"{level}-level $export is not supported")
        token = self._authorize(request, facility, "Patient", "r")
        members: frozenset[str] | None = None
        if level == "group":
            group = facility.groups.get(request.path_params["group"])
            if group is None:
                raise _outcome(404, "not-found", "Group is not known")
            members = frozenset(facility.groups.member_ids(group))
        if request.headers.get("prefer", "").lower() != "respond-async":
            raise _outcome(400, "invalid", "$export requires the header Prefer: respond-async")
        params = request.query_params
        types = [t for t in params.get("_type", "").split(",") if t]
        unknown = [t for t in types if t not in facility.store.resource_types]
        if unknown:
            raise _outcome(400, "not-supported", f"_type {','.join(unknown)} is not supported")
        since_ms: int | None = None
        if "_since" in params:
            try:
                since_ms = date_range(params["_since"])[0]
            except ValueError:
                raise _outcome(400, "invalid", "_since must be a FHIR instant") from None
        retry_after = str(max(1, math.ceil(facility.scaled(facility.profile.bulk_retry_after_s))))
        try:
            job = self.exports[facility.id].kickoff(
                token.client_id,
                str(request.url),
                types,
                since_ms,
                int(self.clock() * 1000),
                garbled=frozenset(facility.faults.config.bad_ndjson),
                patients=members,
            )
        except ExportBusy:
            raise _outcome(
                429,
                "throttled",
                "an export of this client is already in progress",
                {"Retry-After": retry_after},
            ) from None
        location = f"{_origin(request)}/{facility.id}/fhir/$export-poll/{job.id}"
        return Response(status_code=202, headers={"Content-Location": location})

    async def export_status(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        self._authorize(request, facility, "Patient", "r")
        exports = self.exports[facility.id]
        job_id = request.path_params["job"]
        if request.method == "DELETE":
            if not exports.cancel(job_id):
                raise _outcome(404, "not-found", "no such export job")
            return Response(status_code=202)
        job = exports.get(job_id)
        if job is None:
            raise _outcome(404, "not-found", "no such export job")
        if facility.faults.config.bulk_job_error:
            facility.faults.count("bulk_job_error")
            raise _outcome(500, "exception", "the export job failed")
        if not exports.poll(job):
            retry_after = str(max(1, math.ceil(facility.scaled(facility.profile.bulk_retry_after_s))))
            total = facility.profile.bulk_polls_until_done + 1
            done = total - job.polls_left - 1
            return Response(
                status_code=202,
                headers={"X-Progress": f"{100 * done // total}% complete", "Retry-After": retry_after},
            )
        file_base = f"{_origin(request)}/{facility.id}/fhir/$export-file"
        return _json(exports.manifest(job, file_base))

    async def export_file(self, request: Request) -> Response:
        facility = await self._fhir_request(request)
        self._authorize(request, facility, "Patient", "r")
        job = self.exports[facility.id].get(request.path_params["job"])
        name = request.path_params["file"]
        body = job.files.get(name) if job is not None and job.done else None
        if body is None:
            raise _outcome(404, "not-found", "no such export file")
        return Response(body, media_type=NDJSON)

    # -- admin -------------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return _json({"ok": True})

    async def activity(self, request: Request) -> Response:
        facility = self._facility(request)
        try:
            body = await request.json()
            changes, adt = body["changes"], body.get("adt", False)
        except (ValueError, KeyError, TypeError, AttributeError):
            changes, adt = None, False
        if not isinstance(changes, int) or isinstance(changes, bool) or not 0 <= changes <= MAX_ACTIVITY:
            return _json({"error": f'body must be {{"changes": 0..{MAX_ACTIVITY}}}'}, 400)
        if not isinstance(adt, bool) or (adt and "Encounter" not in facility.store.resource_types):
            return _json({"error": '"adt": true needs a profile with Encounters (not generic)'}, 400)
        facility.activity(changes, adt=adt)
        return _json({"changes": changes})

    async def change(self, request: Request) -> Response:
        """``POST {"type": T, "id": i, "delete": true}`` deletes one resource; ``"delete": false``
        creates a deleted one again with its last content. Announced as ``activity``'s changes are."""
        facility = self._facility(request)
        try:
            body = await request.json()
            rtype, id_, delete = body["type"], body["id"], body["delete"]
        except (ValueError, KeyError, TypeError, AttributeError):
            rtype = id_ = delete = None
        if not (isinstance(rtype, str) and isinstance(id_, str) and isinstance(delete, bool)):
            return _json({"error": 'body must be {"type": T, "id": i, "delete": true|false}'}, 400)
        if rtype not in facility.store.resource_types:
            return _json({"error": f"{rtype} is not a type of this facility"}, 404)
        try:
            change = facility.change(rtype, id_, delete=delete)
        except KeyError:
            return _json({"error": f"{rtype}/{id_} is not known"}, 404)
        except ValueError as exc:
            return _json({"error": str(exc)}, 409)
        return _json({"change": change.kind, "version": change.version})

    async def truth(self, request: Request) -> Response:
        content = request.query_params.get("content") == "true"
        return _json({"resources": self._facility(request).truth(content=content)})

    async def notifications(self, request: Request) -> Response:
        return _json(self._facility(request).notification_stats().as_dict())

    async def requests(self, request: Request) -> Response:
        return _json(self._facility(request).traffic.as_dict())

    async def dropped(self, request: Request) -> Response:
        events = self._facility(request).notification_stats().dropped_events
        return _json({"event_numbers": [e["event_number"] for e in events], "events": events})

    async def faults(self, request: Request) -> Response:
        facility = self._facility(request)
        if request.method == "POST":
            try:
                update = FaultUpdate.model_validate_json(await request.body())
            except pydantic.ValidationError as exc:
                return _json({"error": "invalid fault update", "detail": json.loads(exc.json())}, 400)
            facility.apply_faults(update)
        elif request.method == "DELETE":
            facility.apply_faults(FaultUpdate(reset=True))
        return _json(facility.faults.state())

    async def admin_exports(self, request: Request) -> Response:
        """The facility's ``$export`` kick-offs and the jobs it still holds (``Exports.state``)."""
        facility = self._facility(request)
        return _json(self.exports[facility.id].state())

    async def admin_groups(self, request: Request) -> Response:
        """``POST {"id": g, "members": [patient ids] | null}`` sets a Group (null: every live patient);
        ``{"id": g, "remove": true}`` removes it. Answers every Group as served."""
        facility = self._facility(request)
        if request.method == "POST":
            try:
                body = await request.json()
                group_id, members, remove = body["id"], body.get("members"), body.get("remove", False)
            except (ValueError, KeyError, TypeError, AttributeError):
                return _json({"error": 'body must be {"id": ..., "members": [...] | null}'}, 400)
            valid = members is None or (
                isinstance(members, list) and all(isinstance(m, str) for m in members)
            )
            if not isinstance(group_id, str) or not group_id or not valid:
                return _json({"error": "id must be a string, members a list of Patient ids or null"}, 400)
            if remove:
                facility.groups.remove(group_id)
            else:
                facility.groups.put(group_id, members, int(self.clock() * 1000))
        return _json({"groups": [facility.groups.resource(g) for g in facility.groups.all()]})

    async def mllp(self, request: Request) -> Response:
        """The HL7 v2 feed's ground truth: counters, and every message with its status (``ehrsim.mllp``)."""
        facility = self._facility(request)
        if facility.mllp is None:
            return _json({"error": f"facility {facility.id} has no mllp feed"}, 404)
        return _json(facility.mllp.state())

    async def subscriptions(self, request: Request) -> Response:
        facility = self._facility(request)
        return _json(
            {
                "subscriptions": [
                    {**s.resource(), "eventsSinceSubscriptionStart": s.events_since_start, "epoch": s.epoch}
                    for s in self._subscriptions(facility).values()
                ]
            }
        )


def _bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind, "entry": entries}
    if kind == "searchset":
        bundle["total"] = len(entries)
    return bundle


async def _problem_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Problem)
    return exc.response


def create_app(
    config: SimConfig,
    *,
    public_base_url: str | None = None,
    clock: Clock = time.time,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """Build the simulator. ``public_base_url`` (else ``config.public_base_url``, else
    ``DEFAULT_PUBLIC_BASE_URL``) is the origin used in notification URLs; ``clock`` drives token expiry
    and ``lastUpdated``; ``webhook_transport`` replaces the network for the senders and JWKS fetches
    (tests)."""
    origin = public_base_url or config.public_base_url or DEFAULT_PUBLIC_BASE_URL
    facilities = {f.id: Facility(f, clock=clock, public_base_url=origin) for f in config.facilities}
    api = _Api(facilities, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        senders = [f.sender for f in facilities.values() if f.sender is not None]
        # The sender bounds each delivery with its subscription's own timeout; this is only a backstop.
        async with httpx.AsyncClient(transport=webhook_transport, timeout=120.0) as client:
            api.outbound = client
            tasks = [asyncio.create_task(s.run(client)) for s in senders]
            tasks += [asyncio.create_task(f.mllp.run()) for f in facilities.values() if f.mllp is not None]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                api.outbound = None

    routes = [
        Route("/_admin/healthz", api.healthz, methods=["GET"]),
        Route("/_admin/{fac}/activity", api.activity, methods=["POST"]),
        Route("/_admin/{fac}/change", api.change, methods=["POST"]),
        Route("/_admin/{fac}/truth", api.truth, methods=["GET"]),
        Route("/_admin/{fac}/notifications", api.notifications, methods=["GET"]),
        Route("/_admin/{fac}/notifications/dropped", api.dropped, methods=["GET"]),
        Route("/_admin/{fac}/requests", api.requests, methods=["GET"]),
        Route("/_admin/{fac}/faults", api.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_admin/{fac}/subscriptions", api.subscriptions, methods=["GET"]),
        Route("/_admin/{fac}/mllp", api.mllp, methods=["GET"]),
        Route("/_admin/{fac}/groups", api.admin_groups, methods=["GET", "POST"]),
        Route("/_admin/{fac}/exports", api.admin_exports, methods=["GET"]),
        Route("/{fac}/oauth2/token", api.token, methods=["POST"]),
        Route("/{fac}/fhir/.well-known/smart-configuration", api.smart_configuration, methods=["GET"]),
        Route("/{fac}/fhir/metadata", api.metadata, methods=["GET"]),
        Route("/{fac}/fhir", api.search_base, methods=["GET"]),
        Route("/{fac}/fhir/$export", api.export, methods=["GET"]),
        Route("/{fac}/fhir/Patient/$export", api.export, methods=["GET"]),
        Route("/{fac}/fhir/Group/{group}/$export", api.export, methods=["GET"]),
        Route("/{fac}/fhir/$export-poll/{job}", api.export_status, methods=["GET", "DELETE"]),
        Route("/{fac}/fhir/$export-file/{job}/{file}", api.export_file, methods=["GET"]),
        Route("/{fac}/fhir/Group", api.group_search, methods=["GET"]),
        Route("/{fac}/fhir/Group/{id}", api.group_read, methods=["GET"]),
        Route("/{fac}/fhir/Subscription/{id}/$status", api.subscription_status, methods=["GET"]),
        Route("/{fac}/fhir/Subscription/{id}/$events", api.subscription_events, methods=["GET"]),
        Route("/{fac}/fhir/{type}/_history", api.type_history, methods=["GET"]),
        Route("/{fac}/fhir/{type}/{id}/_history", api.instance_history, methods=["GET"]),
        Route("/{fac}/fhir/{type}", api.search, methods=["GET"]),
        Route("/{fac}/fhir/{type}", api.create_subscription, methods=["POST"]),
        Route("/{fac}/fhir/{type}/{id}", api.read, methods=["GET"]),
        Route("/{fac}/fhir/{type}/{id}", api.update_subscription, methods=["PUT"]),
        Route("/{fac}/fhir/{type}/{id}", api.delete_subscription, methods=["DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={_Problem: _problem_handler})
    app.state.facilities = facilities
    return app

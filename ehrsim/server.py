"""The ASGI app: every facility under ``/{facility}``, plus the unauthenticated ``/_admin`` API.

Plain Starlette (no FastAPI dependency injection or validation layer) keeps the per-request overhead
low for benchmarks. All state lives in memory and is only touched from the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Annotated, Any
from urllib.parse import parse_qsl

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ehrsim.auth import AccessToken, TokenError
from ehrsim.config import SimConfig
from ehrsim.facility import Facility
from ehrsim.fhir import FHIR_JSON, capability_statement, operation_outcome, smart_configuration
from ehrsim.instants import Clock, date_range, format_instant
from ehrsim.store import Record, ResourceStore

DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8090"
DEFAULT_COUNT = 50
MAX_COUNT = 1000
MAX_ACTIVITY = 1_000_000
_IGNORED_PARAMS = frozenset({"_format", "_pretty"})
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


class _Search(BaseModel):
    """A search's position; the whole of it travels in the opaque ``_page_token``."""

    model_config = ConfigDict(frozen=True)

    resource_type: str
    count: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    descending: bool
    total: Annotated[int, Field(ge=0)]
    pos: int
    start: Annotated[int, Field(ge=0)] = 0  # window mode: log positions, fixed at the first page
    stop: Annotated[int, Field(ge=0)] = 0
    ids: tuple[str, ...] | None = None  # _id mode: ids re-resolved per page; pos is an offset
    lo: int | None = None
    hi: int | None = None

    def at(self, pos: int) -> _Search:
        return self.model_copy(update={"pos": pos})

    def encode(self) -> str:
        return base64.urlsafe_b64encode(self.model_dump_json().encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, resource_type: str) -> _Search:
        try:
            search = cls.model_validate_json(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (ValueError, binascii.Error):  # pydantic's ValidationError is a ValueError
            search = None
        if search is None or search.resource_type != resource_type or search.pos < 0:
            raise _outcome(400, "invalid", "invalid _page_token")
        return search


class _Api:
    def __init__(self, facilities: dict[str, Facility], clock: Clock) -> None:
        self.facilities = facilities
        self.clock = clock

    # -- helpers -------------------------------------------------------------------------------------

    def _facility(self, request: Request) -> Facility:
        facility = self.facilities.get(request.path_params["fac"])
        if facility is None:
            raise _outcome(404, "not-found", "unknown facility")
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
        if resource_type not in facility.store.resource_types:
            raise _outcome(404, "not-supported", f"resource type {resource_type} is not supported")
        if not token.allows(resource_type, perm):
            raise _outcome(403, "forbidden", f"the token's scopes do not allow this on {resource_type}")
        return token

    # -- SMART and metadata ----------------------------------------------------------------------------

    async def smart_configuration(self, request: Request) -> Response:
        facility = self._facility(request)
        return _json(smart_configuration(f"{_origin(request)}/{facility.id}/oauth2/token"))

    async def metadata(self, request: Request) -> Response:
        facility = self._facility(request)
        origin = _origin(request)
        return _fhir(
            capability_statement(
                f"{origin}/{facility.id}/fhir",
                f"{origin}/{facility.id}/oauth2/token",
                facility.store.resource_types,
                format_instant(int(self.clock() * 1000)),
            )
        )

    async def token(self, request: Request) -> Response:
        facility = self.facilities.get(request.path_params["fac"])
        if facility is None:
            return _json({"error": "invalid_request", "error_description": "unknown facility"}, 404)
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        try:
            answer = facility.auth.issue(form, f"{_origin(request)}/{facility.id}/oauth2/token")
        except TokenError as exc:
            return _json({"error": exc.error, "error_description": exc.description}, exc.status)
        return _json(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # -- FHIR read and search --------------------------------------------------------------------------

    async def read(self, request: Request) -> Response:
        facility = self._facility(request)
        resource_type, id_ = request.path_params["type"], request.path_params["id"]
        self._authorize(request, facility, resource_type, "r")
        record = facility.store.get(resource_type, id_)
        if record is None:
            raise _outcome(404, "not-found", f"{resource_type}/{id_} is not known")
        if record.deleted:
            raise _outcome(410, "deleted", f"{resource_type}/{id_} has been deleted")
        return Response(
            record.body,
            headers={
                "ETag": f'W/"{record.version}"',
                "Last-Modified": formatdate(record.last_updated / 1000, usegmt=True),
            },
            media_type=FHIR_JSON,
        )

    async def search(self, request: Request) -> Response:
        facility = self._facility(request)
        resource_type = request.path_params["type"]
        self._authorize(request, facility, resource_type, "s")
        page_token = request.query_params.get("_page_token")
        if page_token is not None:
            search = _Search.decode(page_token, resource_type)
        else:
            search = self._new_search(facility, resource_type, request.query_params.multi_items())
        records, next_search = self._page(facility, resource_type, search)
        base = f"{_origin(request)}/{facility.id}/fhir"
        header: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": search.total,
            "link": [{"relation": "self", "url": str(request.url)}],
        }
        if next_search is not None:
            header["link"].append(
                {
                    "relation": "next",
                    "url": f"{base}/{resource_type}?_page_token={next_search.encode()}",
                }
            )
        head = json.dumps(header, separators=(",", ":")).encode()
        if records:
            entries = b",".join(
                b'{"fullUrl":"%s/%s/%s","resource":%s,"search":{"mode":"match"}}'
                % (base.encode(), resource_type.encode(), r.id.encode(), r.body)
                for r in records
            )
            head = head[:-1] + b',"entry":[' + entries + b"]}"
        return Response(head, media_type=FHIR_JSON)

    def _new_search(
        self, facility: Facility, resource_type: str, params: Iterable[tuple[str, str]]
    ) -> _Search:
        lo: int | None = None
        hi: int | None = None
        ids: tuple[str, ...] | None = None
        count, descending = DEFAULT_COUNT, False
        for name, value in params:
            if name == "_lastUpdated":
                lo, hi = _narrow(lo, hi, value)
            elif name == "_id":
                wanted = tuple(v for v in value.split(",") if v)
                ids = wanted if ids is None else tuple(v for v in ids if v in wanted)
            elif name == "_count":
                if not value.isdigit():
                    raise _outcome(400, "invalid", "_count must be a non-negative integer")
                count = min(int(value), MAX_COUNT)
            elif name == "_sort":
                if value not in ("_lastUpdated", "-_lastUpdated"):
                    raise _outcome(
                        400, "not-supported", "only _sort=_lastUpdated and -_lastUpdated are supported"
                    )
                descending = value.startswith("-")
            elif name not in _IGNORED_PARAMS:
                raise _outcome(400, "not-supported", f"search parameter {name} is not supported")
        if ids is not None:
            search = _Search(
                resource_type=resource_type,
                count=count,
                descending=descending,
                total=0,
                pos=0,
                ids=ids,
                lo=lo,
                hi=hi,
            )
            return search.model_copy(update={"total": len(_by_ids(facility.store, resource_type, search))})
        start, stop = facility.store.window(resource_type, lo, hi)
        return _Search(
            resource_type=resource_type,
            count=count,
            descending=descending,
            total=facility.store.count_live(resource_type, start, stop),
            pos=stop - 1 if descending else start,
            start=start,
            stop=stop,
        )

    @staticmethod
    def _page(facility: Facility, resource_type: str, search: _Search) -> tuple[list[Record], _Search | None]:
        """One page, and the search positioned after it (``None`` on the last page)."""
        if search.count == 0:
            return [], None
        if search.ids is not None:
            matches = _by_ids(facility.store, resource_type, search)
            end = search.pos + search.count
            next_search = search.at(end) if end < len(matches) else None
            return matches[search.pos : end], next_search
        records, pos = facility.store.scan(
            resource_type,
            search.start,
            search.stop,
            search.pos,
            count=search.count,
            descending=search.descending,
        )
        return records, None if pos is None else search.at(pos)

    # -- admin -------------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return _json({"ok": True})

    async def activity(self, request: Request) -> Response:
        facility = self._facility(request)
        try:
            changes = (await request.json())["changes"]
        except (ValueError, KeyError, TypeError):
            changes = None
        if not isinstance(changes, int) or isinstance(changes, bool) or not 0 <= changes <= MAX_ACTIVITY:
            return _json({"error": f'body must be {{"changes": 0..{MAX_ACTIVITY}}}'}, 400)
        facility.activity(changes)
        return _json({"changes": changes})

    async def truth(self, request: Request) -> Response:
        return _json({"resources": self._facility(request).truth()})

    async def notifications(self, request: Request) -> Response:
        return _json(self._facility(request).notification_stats().as_dict())

    async def dropped(self, request: Request) -> Response:
        return _json({"event_numbers": self._facility(request).notification_stats().dropped_events})


def _by_ids(store: ResourceStore, resource_type: str, search: _Search) -> list[Record]:
    """The live resources among ``search.ids`` inside its ``_lastUpdated`` range, sorted."""
    lo, hi = search.lo, search.hi
    found = {
        r.id: r
        for r in (store.get(resource_type, i) for i in search.ids or ())
        if r is not None
        and not r.deleted
        and (lo is None or r.last_updated >= lo)
        and (hi is None or r.last_updated < hi)
    }
    return sorted(found.values(), key=lambda r: r.last_updated, reverse=search.descending)


def _narrow(lo: int | None, hi: int | None, value: str) -> tuple[int | None, int | None]:
    """Intersect ``[lo, hi)`` with one ``_lastUpdated`` condition (prefix eq/gt/ge/lt/le/sa/eb)."""
    prefix, rest = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    try:
        start, end = date_range(rest)
    except ValueError as exc:
        raise _outcome(400, "invalid", f"_lastUpdated: {exc}") from None
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
        raise _outcome(400, "not-supported", f"_lastUpdated prefix {prefix} is not supported")
    new_lo, new_hi = bounds[prefix]
    if new_lo is not None:
        lo = new_lo if lo is None else max(lo, new_lo)
    if new_hi is not None:
        hi = new_hi if hi is None else min(hi, new_hi)
    return lo, hi


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
    and ``lastUpdated``; ``webhook_transport`` replaces the network for the senders (tests)."""
    origin = public_base_url or config.public_base_url or DEFAULT_PUBLIC_BASE_URL
    facilities = {f.id: Facility(f, clock=clock, public_base_url=origin) for f in config.facilities}
    api = _Api(facilities, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        senders = [f.sender for f in facilities.values() if f.sender is not None]
        async with httpx.AsyncClient(transport=webhook_transport) as client:
            tasks = [asyncio.create_task(s.run(client)) for s in senders]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    routes = [
        Route("/_admin/healthz", api.healthz, methods=["GET"]),
        Route("/_admin/{fac}/activity", api.activity, methods=["POST"]),
        Route("/_admin/{fac}/truth", api.truth, methods=["GET"]),
        Route("/_admin/{fac}/notifications", api.notifications, methods=["GET"]),
        Route("/_admin/{fac}/notifications/dropped", api.dropped, methods=["GET"]),
        Route("/{fac}/oauth2/token", api.token, methods=["POST"]),
        Route("/{fac}/fhir/.well-known/smart-configuration", api.smart_configuration, methods=["GET"]),
        Route("/{fac}/fhir/metadata", api.metadata, methods=["GET"]),
        Route("/{fac}/fhir/{type}", api.search, methods=["GET"]),
        Route("/{fac}/fhir/{type}/{id}", api.read, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={_Problem: _problem_handler})
    app.state.facilities = facilities
    return app

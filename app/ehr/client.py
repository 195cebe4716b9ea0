"""The EHR client of one facility: reads resources from its registered base URL only.

Retry policy, the first of two tiers: transport errors, 429, 502/503/504, a 500 the vendor's adapter
calls transient and our own politeness waits are retried here a few times with exponential backoff and
jitter, honouring ``Retry-After`` up to ``RETRY_AFTER_CAP_S`` (and pausing the whole facility for that
long, across processes); what still fails is raised as a TransientEHRError for the caller to back off in
Postgres. A 401 drops the token and retries the same URL once with a fresh one. A ``next`` link the
server no longer knows (the adapter's ``paging_session_expired``) re-issues the query. 404 and 410 on a read
are not errors: the result says the resource is absent, and which status said so (``app.ingest.drain``
decides when a 404 is a deletion). Redirects are followed only inside the base URL.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urljoin

import httpx
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from app.ehr.auth import SmartBackendAuth
from app.ehr.politeness import Politeness, Unlimited
from app.ehr.retry_after import parse_retry_after
from app.errors import (
    EHRRateLimited,
    EHRServerError,
    EHRTokenExpired,
    EHRTransportError,
    EHRUnavailable,
    ForeignHostError,
    IngestError,
    PagingLoop,
    PagingSessionExpired,
    SearchTooBroad,
    TooManyRedirects,
    TransientEHRError,
    UnparseableResource,
    rejected,
)
from app.fhir import jsonwire
from app.fhir.base_url import is_under_base
from app.fhir.outcomes import outcome_issue_codes
from app.fhir.references import ResourceRef
from app.fhir.resources import resource_meta
from app.metrics import ehr_request

log = structlog.get_logger("ehr.client")

RETRY_AFTER_CAP_S = 10.0
MAX_REDIRECTS = 3
MAX_QUERY_REISSUES = 2  # a search whose paging session expires is issued again at most this many times


WriteMethod = Literal["POST", "PUT", "DELETE"]

#: How a vendor's 500 is classified: from the status and the parsed body (an OperationOutcome or None).
ServerErrorPolicy = Callable[[int, Any], IngestError]


def transient_server_error(status: int, _body: Any) -> IngestError:
    return EHRServerError(f"{status} from EHR")


#: Whether a 4xx answer to a ``next`` link says the server forgot the search (from the status and the
#: parsed body): then the query is issued again.
PagingExpiredPolicy = Callable[[int, Any], bool]


def never_expired(_status: int, _body: Any) -> bool:
    return False


@dataclass(frozen=True)
class FetchResult:
    ref: ResourceRef
    resource: dict[str, Any] | None  # None: the EHR says the resource is gone (404/410)
    fetched_at: datetime
    status: int = 200  # 404 and 410 are told apart: only a 410 is a deletion on its own


class EHRClient:
    def __init__(
        self,
        *,
        facility_id: str,
        base_url: str,
        auth: SmartBackendAuth,
        http: httpx.Client,
        politeness: Politeness | None = None,
        attempts: int = 4,
        max_delay_s: float = 30.0,
        server_error: ServerErrorPolicy = transient_server_error,
        paging_expired: PagingExpiredPolicy = never_expired,
    ) -> None:
        self.facility_id = facility_id
        self.base_url = base_url.rstrip("/")
        self._auth = auth
        self._http = http
        self._politeness = politeness or Unlimited()
        self._attempts = attempts
        self._max_delay_s = max_delay_s
        self._server_error = server_error
        self._paging_expired = paging_expired

    def close(self) -> None:
        self._http.close()

    def read(self, ref: ResourceRef) -> FetchResult:
        response = self._get_with_retries(f"{self.base_url}/{ref.relative}", gone_ok=True)
        fetched_at = datetime.now(UTC)
        if response.status_code in (404, 410):
            return FetchResult(ref, None, fetched_at, response.status_code)
        body = _json(response, f"{ref.resource_type} read")
        resource_meta(body, expected_type=ref.resource_type)
        if body.get("id") != ref.resource_id:
            raise UnparseableResource(f"{ref.resource_type} read returned another id")
        return FetchResult(ref, body, fetched_at)

    def get_json(self, path: str, *, authenticated: bool = True) -> dict[str, Any]:
        """One JSON object at ``path`` under the base URL (``metadata``, ``.well-known/...``), with the same
        retries as a read. ``authenticated=False`` sends no token: the CapabilityStatement and the SMART
        configuration are public, and probing them must not need credentials that may not work yet."""
        response = self._get_with_retries(
            f"{self.base_url}/{path.lstrip('/')}", gone_ok=False, authenticated=authenticated
        )
        return _json(response, path.split("?", 1)[0])

    def fetch_json(self, path: str) -> tuple[int, dict[str, Any] | None]:
        """An authenticated GET of ``path`` under the base URL (``Subscription/{id}/$status``): the status
        and the JSON object, with 404 and 410 answered rather than raised, as a read's are."""
        response = self._get_with_retries(f"{self.base_url}/{path.lstrip('/')}", gone_ok=True)
        if response.status_code in (404, 410):
            return response.status_code, None
        return response.status_code, _json(response, path.split("?", 1)[0])

    def write(
        self, method: WriteMethod, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any] | None]:
        """``POST``/``PUT``/``DELETE`` at ``path`` under the base URL (managing our Subscription): the status
        and the JSON object answered, if any. 404 and 410 are answers, not errors (the caller decides);
        other failures raise as a read's do, with the same retries, re-authentication and host guard.
        Redirects are not followed: a write is never re-sent elsewhere."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        response = self._with_retries(lambda: self._write_once(method, url, body))
        parsed = _json_or_none(response)
        return response.status_code, parsed if isinstance(parsed, dict) else None

    def _write_once(self, method: WriteMethod, url: str, body: dict[str, Any] | None) -> httpx.Response:
        if not is_under_base(url, self.base_url):
            raise ForeignHostError("refusing a URL outside the facility's base URL")
        token = self._auth.token()
        response = self._send(method, url, token, body)
        if response.status_code == 401:
            self._auth.invalidate(token)
            response = self._send(method, url, self._auth.token(), body)
            if response.status_code == 401:
                raise EHRTokenExpired("401 after re-authentication")
        if 200 <= response.status_code < 300 or response.status_code in (404, 410):
            return response
        return self._classify(response, gone_ok=False, next_page=False)

    def _send(self, method: WriteMethod, url: str, token: str, body: dict[str, Any] | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
        content: bytes | None = None
        if body is not None:
            headers["Content-Type"] = "application/fhir+json"
            content = jsonwire.dumps(body).encode()
        try:
            with self._politeness.slot():
                started = time.perf_counter()
                try:
                    response = self._http.request(method, url, headers=headers, content=content)
                finally:
                    elapsed = time.perf_counter() - started
        except httpx.HTTPError as exc:
            ehr_request(self.facility_id, "transport_error").observe(elapsed)
            raise EHRTransportError(type(exc).__name__) from exc
        ehr_request(self.facility_id, str(response.status_code)).observe(elapsed)
        return response

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every page of a search, following ``next`` links verbatim (resolved against the request URL,
        never rebuilt). Returns the raw searchset Bundles; callers pick entries through their adapter.

        A server that forgot the search between two pages (the vendor's adapter tells: Epic 4113) gets
        the query again from its first page, up to ``MAX_QUERY_REISSUES`` times; the pages of an
        abandoned run are dropped, so nothing is returned twice. Then ``PagingSessionExpired``
        (transient: the rows back off, they are not dead-lettered)."""
        first = str(httpx.URL(f"{self.base_url}/{resource_type}", params=params))
        for run in range(MAX_QUERY_REISSUES + 1):
            try:
                return self._pages(first, resource_type)
            except PagingSessionExpired:
                log.info(
                    "ehr.search.session_expired",
                    facility_id=self.facility_id,
                    resource_type=resource_type,
                    run=run + 1,
                )
        raise PagingSessionExpired(f"{resource_type} search: paging expired {MAX_QUERY_REISSUES + 1} times")

    def search_pages(
        self, resource_type: str, params: Mapping[str, str | list[str]]
    ) -> Iterator[dict[str, Any]]:
        """The pages of a search one at a time, as ``search`` reads them, for callers that commit each
        page before reading the next (the reconciler). When the server forgets the search between two
        pages, the query is issued again and its pages come again from the first: callers must be
        idempotent. A page that fails after the retries raises, and nothing more is yielded."""
        return self._reissued_pages(f"{self.base_url}/{resource_type}", params, resource_type)

    def history_pages(
        self, resource_type: str, params: Mapping[str, str | list[str]]
    ) -> Iterator[dict[str, Any]]:
        """The pages of ``{type}/_history`` (``_since``, ``_count``) one at a time, ``next`` links followed
        as a search's are (HAPI's ``?_getpages=`` with no type in the path, ehrsim's own page token), and
        the query issued again when the server forgets it: the same guarantees as ``search_pages``."""
        return self._reissued_pages(f"{self.base_url}/{resource_type}/_history", params, resource_type)

    def _reissued_pages(
        self, url: str, params: Mapping[str, str | list[str]], resource_type: str
    ) -> Iterator[dict[str, Any]]:
        first = str(httpx.URL(url, params=params))
        for run in range(MAX_QUERY_REISSUES + 1):
            try:
                yield from self._iter_pages(first, resource_type)
                return
            except PagingSessionExpired:
                log.info(
                    "ehr.search.session_expired",
                    facility_id=self.facility_id,
                    resource_type=resource_type,
                    run=run + 1,
                )
        raise PagingSessionExpired(f"{resource_type} search: paging expired {MAX_QUERY_REISSUES + 1} times")

    def _pages(self, url: str, resource_type: str) -> list[dict[str, Any]]:
        return list(self._iter_pages(url, resource_type))

    def _iter_pages(self, url: str, resource_type: str) -> Iterator[dict[str, Any]]:
        for n in range(10_000):  # a bound against a server that links a page to itself forever
            response = self._get_with_retries(url, gone_ok=False, next_page=n > 0)
            bundle = _json(response, f"{resource_type} search")
            if bundle.get("resourceType") != "Bundle":
                raise UnparseableResource(f"{resource_type} search did not return a Bundle")
            yield bundle
            next_url = next_link(bundle)
            if next_url is None:
                return
            url = urljoin(url, next_url)
        raise PagingLoop("search paging did not end")

    # -- requests other than reads and searches (Bulk Data) ----------------------------------------

    def send(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        busy_429: bool = False,
    ) -> httpx.Response:
        """One request to a URL under the base (absolute, or relative to it), with the same token,
        politeness, retries and error classification as a read; an answer in ``ok`` is returned, any
        other is raised. ``busy_429``: a 429 here means "busy", not "slow down" (a second ``$export``
        kick-off while a job runs): it neither pauses the facility's other reads nor is retried here,
        but raised at once (``EHRRateLimited`` with its ``Retry-After``) for the caller to wait."""
        target = urljoin(f"{self.base_url}/", url)

        def once() -> httpx.Response:
            try:
                return self._send_once(method, target, ok=ok, headers=headers, pause_on_429=not busy_429)
            except EHRRateLimited as exc:
                if busy_429:
                    raise _Busy(exc) from exc
                raise

        try:
            return self._with_retries(once)
        except _Busy as busy:
            raise busy.error from busy.error.__cause__

    @contextlib.contextmanager
    def stream(self, url: str, *, headers: Mapping[str, str] | None = None) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives (``iter_bytes``), never held whole: Bulk Data files.
        Opening it (up to the status line and headers) is retried and classified like a read; the
        politeness slot is held while it opens, not while the body streams, so a long download takes
        one request of the facility's budget, not its concurrency for minutes."""
        target = urljoin(f"{self.base_url}/", url)
        response = self._with_retries(
            lambda: self._send_once("GET", target, ok=(200,), headers=headers, stream=True)
        )
        try:
            yield response
        except httpx.HTTPError as exc:  # the body broke off midway (reset, read timeout)
            raise EHRTransportError(type(exc).__name__) from exc
        finally:
            response.close()

    def _with_retries(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        retrying = Retrying(
            retry=retry_if_exception(_worth_retrying_now),
            stop=stop_after_attempt(self._attempts) | stop_after_delay(self._max_delay_s),
            wait=_wait_honouring_retry_after,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return call()
        raise AssertionError("unreachable")  # pragma: no cover

    def _send_once(
        self,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...],
        headers: Mapping[str, str] | None,
        pause_on_429: bool = True,
        stream: bool = False,
    ) -> httpx.Response:
        token = self._auth.token()
        response = self._request(method, url, token, headers=headers, stream=stream)
        if response.status_code == 401:
            response.close()
            self._auth.invalidate(token)
            response = self._request(method, url, self._auth.token(), headers=headers, stream=stream)
            if response.status_code == 401:
                response.close()
                raise EHRTokenExpired("401 after re-authentication")
        if response.status_code in ok:
            return response
        try:
            if stream:
                response.read()  # an error body is small: read it for the classification
        except httpx.HTTPError as exc:
            raise EHRTransportError(type(exc).__name__) from exc
        finally:
            response.close()
        return self._classify(response, gone_ok=False, next_page=False, pause_on_429=pause_on_429)

    # -- transport ---------------------------------------------------------------------------------

    def _get_with_retries(
        self, url: str, *, gone_ok: bool, next_page: bool = False, authenticated: bool = True
    ) -> httpx.Response:
        if not authenticated:
            return self._with_retries(
                lambda: self._classify(self._get_authorized(url, None), gone_ok=gone_ok, next_page=False)
            )
        return self._with_retries(lambda: self._get_once(url, gone_ok=gone_ok, next_page=next_page))

    def _get_once(self, url: str, *, gone_ok: bool, next_page: bool) -> httpx.Response:
        token = self._auth.token()
        response = self._get_authorized(url, token)
        if response.status_code == 401:
            # Tokens expire early or mid-pagination: one fresh token, the same URL, once.
            self._auth.invalidate(token)
            response = self._get_authorized(url, self._auth.token())
            if response.status_code == 401:
                raise EHRTokenExpired("401 after re-authentication")
        return self._classify(response, gone_ok=gone_ok, next_page=next_page)

    def _get_authorized(self, url: str, token: str | None) -> httpx.Response:
        return self._request("GET", url, token)

    def _request(
        self,
        method: str,
        url: str,
        token: str | None,
        *,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        sent = {"Accept": "application/fhir+json", **(headers or {})}
        if token is not None:  # None: a public document (CapabilityStatement, SMART configuration)
            sent["Authorization"] = f"Bearer {token}"
        for _ in range(MAX_REDIRECTS + 1):
            if not is_under_base(url, self.base_url):
                raise ForeignHostError("refusing a URL outside the facility's base URL")
            try:
                with self._politeness.slot():
                    started = time.perf_counter()
                    try:
                        request = self._http.build_request(method, url, headers=sent)
                        response = self._http.send(request, stream=stream)
                    finally:
                        elapsed = time.perf_counter() - started
            except httpx.HTTPError as exc:  # transport errors, and bodies that fail to decode
                ehr_request(self.facility_id, "transport_error").observe(elapsed)
                raise EHRTransportError(type(exc).__name__) from exc
            ehr_request(self.facility_id, str(response.status_code)).observe(elapsed)
            if response.is_redirect:
                response.close()
                url = urljoin(url, response.headers.get("location", ""))
                continue
            return response
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")

    def _classify(
        self, response: httpx.Response, *, gone_ok: bool, next_page: bool, pause_on_429: bool = True
    ) -> httpx.Response:
        status = response.status_code
        if status == 200 or (gone_ok and status in (404, 410)):
            return response
        if next_page and 400 <= status < 500 and self._paging_expired(status, _json_or_none(response)):
            raise PagingSessionExpired(f"{status}: the paging session expired")
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=datetime.now(UTC))
        if retry_after is not None and (status == 503 or (status == 429 and pause_on_429)):
            self._politeness.pause(retry_after)
        if status == 429:
            raise EHRRateLimited("429 from EHR", retry_after=retry_after)
        if status in (502, 503, 504):
            raise EHRUnavailable(f"{status} from EHR", retry_after=retry_after)
        if status >= 500:
            # Whether a 500 is worth retrying is the vendor's call (Oracle answers 500 for some permanent
            # errors): its adapter reads the status and the OperationOutcome, if any.
            raise self._server_error(status, _json_or_none(response))
        if status in (400, 403) and "too-costly" in outcome_issue_codes(_json_or_none(response)):
            raise SearchTooBroad(f"{status}: the search matches too much", status)
        raise rejected(status)


class _Busy(Exception):
    """Carries a "busy" 429 past the retry tier (tenacity retries IngestErrors only)."""

    def __init__(self, error: EHRRateLimited) -> None:
        super().__init__(error.reason)
        self.error = error


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = jsonwire.loads(response.content)
    except ValueError as exc:
        raise UnparseableResource(f"{what} returned non-JSON") from exc
    if not isinstance(body, dict):
        raise UnparseableResource(f"{what} returned JSON that is not an object")
    return body


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return jsonwire.loads(response.content)
    except ValueError:
        return None


def _worth_retrying_now(exc: BaseException) -> bool:
    """Transient errors are retried here, unless the EHR asked for a longer pause than we hold a worker
    for: that goes straight back to the Postgres back-off."""
    if isinstance(exc, PagingSessionExpired):
        return False  # the same link would expire again: the search issues the query anew
    if isinstance(exc, TransientEHRError) and exc.retry_after is not None:
        return exc.retry_after <= RETRY_AFTER_CAP_S
    return isinstance(exc, TransientEHRError)


def _wait_honouring_retry_after(state: RetryCallState) -> float:
    backoff = wait_exponential_jitter(multiplier=0.5, max=8.0)(state)
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    if isinstance(exc, IngestError) and exc.retry_after is not None:
        return max(backoff, min(exc.retry_after, RETRY_AFTER_CAP_S))
    return backoff


def next_link(bundle: dict[str, Any]) -> str | None:
    """The URL of a Bundle's first ``next`` link; None where it has none, or ``link`` is not a list of
    link objects (a server's malformed page ends the paging, it does not crash the caller)."""
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None

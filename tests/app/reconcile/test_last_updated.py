"""The ``last-updated`` strategy at the network edge (httpx.MockTransport: a FHIR server with
``_history``): what it asks, the reads it gives the engine, and the watermark each page carries."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.fhir.references import ResourceRef
from app.reconcile.strategies import STRATEGIES, last_updated
from app.reconcile.strategies.base import Page, Scope
from app.vendors import adapter_for
from tests.ehr_mocks import BASE, TOKEN_URL, make_client

WATERMARK = datetime(2026, 3, 1, 12, tzinfo=UTC)
SINCE = WATERMARK - timedelta(minutes=1)


def _instant(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _obs(id_: str, at: datetime) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "meta": {"versionId": "2", "lastUpdated": _instant(at)}}


def _deleted(url: str, at: datetime | None = None, *, status: str = "204 No Content") -> dict[str, Any]:
    response: dict[str, Any] = {"status": status}
    if at is not None:
        response["lastModified"] = _instant(at)
    return {"fullUrl": f"{BASE}/{url}", "request": {"method": "DELETE", "url": url}, "response": response}


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"{BASE}/Observation/{resource['id']}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"Observation/{resource['id']}"},
        "response": {"status": "200 OK"},
    }


class Server:
    """``Observation`` searches and ``Observation/_history`` (two pages, the second by a ``next`` link
    with no type in its path, as HAPI's ``_getpages``), recording every request."""

    def __init__(
        self,
        history: list[list[dict[str, Any]]],
        found: list[dict[str, Any]],
        history_status: int = 200,
        generated: datetime | None = None,
    ) -> None:
        self.history = history
        self.generated = generated
        self.history_status = history_status
        self.found = found
        self.seen: list[httpx.URL] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})
        self.seen.append(request.url)
        path, params = request.url.path, request.url.params
        if path.endswith("/Observation/_history") or "_getpages" in params:
            if self.history_status != 200:
                return httpx.Response(self.history_status, json={"resourceType": "OperationOutcome"})
            n = int(params.get("_getpagesoffset", "0"))
            bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "entry": self.history[n]}
            if self.generated is not None:
                bundle["meta"] = {"lastUpdated": _instant(self.generated)}
            if n + 1 < len(self.history):
                bundle["link"] = [{"relation": "next", "url": f"{BASE}?_getpages=h1&_getpagesoffset={n + 1}"}]
            return httpx.Response(200, json=bundle)
        if path.endswith("/Observation"):
            entries = [{"resource": r, "search": {"mode": "match"}} for r in self.found]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})
        return httpx.Response(404)


def _scope(
    server: Server,
    *,
    history: bool,
    stored: set[str],
    since: datetime | None = SINCE,
    recrawl: bool = False,
    attempts: int = 4,
) -> Scope:
    return Scope(
        client=make_client(httpx.MockTransport(server), vendor="hapi", attempts=attempts),
        adapter=adapter_for("hapi"),
        resource_type="Observation",
        watermark=WATERMARK if since is not None else None,
        since=since,
        started_at=datetime.now(UTC),
        recrawl=recrawl,
        cohort=lambda: [],
        stored_ids=lambda rtype, patient: set(stored) if rtype == "Observation" else set(),
        history=history,
    )


def _run(scope: Scope) -> list[Page]:
    return list(STRATEGIES["last-updated"].pages(scope))


def _reads(pages: list[Page]) -> list[ResourceRef]:
    return [ref for page in pages for ref in page.reads]


def test_deletions_the_history_lists_become_reads_of_the_stored_live_ids_only() -> None:
    t = WATERMARK + timedelta(seconds=10)
    server = Server(
        [
            [
                _deleted("Observation/o1", t),
                _put(_obs("o2", t - timedelta(seconds=1))),  # o2 created again after its deletion
                _deleted("Observation/o2/_history/3", t - timedelta(seconds=2)),  # HAPI names the version
                _deleted("Observation/never-stored", t - timedelta(seconds=3)),
                _deleted("Condition/o3", t - timedelta(seconds=3)),  # another type's: not ours
            ],
            [  # no request.url: the fullUrl names it; a 410 without a method says the same
                {"fullUrl": f"{BASE}/Observation/o4", "response": {"status": "410 Gone"}},
                _deleted("Observation/o1", t - timedelta(seconds=5)),  # o1 again: read once
            ],
        ],
        found=[],
    )

    pages = _run(_scope(server, history=True, stored={"o1", "o2", "o3", "o4", "o5"}))

    assert sorted(r.resource_id for r in _reads(pages)) == ["o1", "o2", "o4"]
    history = [u for u in server.seen if u.path.endswith("/_history") or "_getpages" in u.params]
    assert len(history) == 2
    assert history[0].params["_since"] == _instant(SINCE)
    assert history[0].params["_count"] == "100"


def test_a_stop_inside_the_history_keeps_the_watermark_and_the_search_moves_it_no_later_than_it_saw() -> None:
    listed = WATERMARK + timedelta(seconds=10)  # the newest change the history lists
    later = WATERMARK + timedelta(seconds=30)  # made after the history was read
    server = Server(
        [[_deleted("Observation/o1", listed)], [_put(_obs("o2", WATERMARK))]],
        found=[_obs("o2", WATERMARK), _obs("o6", later)],
    )

    pages = _run(_scope(server, history=True, stored={"o1"}))

    history, search = pages[:2], pages[2:]
    assert [p.reads for p in history] == [[ResourceRef("Observation", "o1")], []]
    assert all(p.high_water is None and not p.resumable for p in history)
    # the history is read before the search: no deletion after the watermark it may move to is unread
    first_search = next(i for i, u in enumerate(server.seen) if u.path.endswith("/Observation"))
    assert first_search == 2
    assert [p.high_water for p in search] == [listed]
    assert all(p.resumable for p in search)


def test_an_empty_history_bounds_the_watermark_by_the_instant_its_bundle_vouches_for() -> None:
    generated = WATERMARK + timedelta(seconds=10)  # when the server read the history
    server = Server([[]], found=[_obs("o6", WATERMARK + timedelta(seconds=30))], generated=generated)

    pages = _run(_scope(server, history=True, stored=set()))

    assert pages[-1].high_water == generated  # a deletion after it is inside the next run's _since


def test_an_empty_history_without_a_bundle_time_does_not_pin_the_watermark() -> None:
    later = WATERMARK + timedelta(seconds=30)
    server = Server([[]], found=[_obs("o6", later)])

    pages = _run(_scope(server, history=True, stored=set()))

    assert pages[-1].high_water == later  # not held at the old watermark run after run


def test_a_history_whose_entries_carry_no_time_bounds_nothing_so_the_watermark_still_moves() -> None:
    later = WATERMARK + timedelta(seconds=30)
    untimed = {"fullUrl": f"{BASE}/Observation/o1", "request": {"method": "DELETE", "url": "Observation/o1"}}
    not_an_entry: Any = "not an entry"
    server = Server([[untimed, not_an_entry]], found=[_obs("o6", later)])

    pages = _run(_scope(server, history=True, stored={"o1"}))

    assert _reads(pages) == [ResourceRef("Observation", "o1")]
    assert pages[-1].high_water == later  # not held at the old watermark run after run


def test_a_history_page_whose_entry_is_not_a_list_reads_nothing_and_does_not_raise() -> None:
    not_a_list: Any = 5
    server = Server([not_a_list], found=[])

    pages = _run(_scope(server, history=True, stored={"o1"}))

    assert _reads(pages) == []


def test_without_history_advertised_nothing_but_the_search_is_asked() -> None:
    later = WATERMARK + timedelta(seconds=30)
    server = Server([[_deleted("Observation/o1", later)]], found=[_obs("o6", later)])

    pages = _run(_scope(server, history=False, stored={"o1"}))

    assert _reads(pages) == []
    assert [u.path for u in server.seen] == ["/fhir/Observation"]
    assert [p.high_water for p in pages] == [later]


def test_a_first_run_without_a_lower_bound_reads_no_history() -> None:
    server = Server([[_deleted("Observation/o1", WATERMARK)]], found=[_obs("o6", WATERMARK)])

    pages = _run(_scope(server, history=True, stored={"o1"}, since=None))

    assert _reads(pages) == []
    assert [u.path for u in server.seen] == ["/fhir/Observation"]


def test_a_run_that_re_crawls_reads_no_history_the_crawl_reads_every_vanished_id() -> None:
    server = Server([[_deleted("Observation/o1", WATERMARK)]], found=[_obs("o6", WATERMARK)])

    pages = _run(_scope(server, history=True, stored={"o1", "o6"}, recrawl=True))

    assert not [u for u in server.seen if u.path.endswith("/_history") or "_getpages" in u.params]
    assert [r.resource_id for r in _reads(pages)] == ["o1"]  # vanished from the crawl
    assert pages[-1].recrawled


def test_a_history_longer_than_a_run_reads_is_left_to_the_re_crawl_and_still_bounds_the_watermark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(last_updated, "MAX_HISTORY_PAGES", 2)
    newest, later = WATERMARK + timedelta(seconds=10), WATERMARK + timedelta(seconds=30)
    server = Server(
        [
            [_deleted("Observation/o1", newest)],
            [_deleted("Observation/o2", newest - timedelta(seconds=1))],
            [_deleted("Observation/o3", newest - timedelta(seconds=2))],  # not reached
        ],
        found=[_obs("o6", later)],
    )

    pages = _run(_scope(server, history=True, stored={"o1", "o2", "o3"}))

    assert [r.resource_id for r in _reads(pages)] == ["o1", "o2"]
    assert len([u for u in server.seen if u.path.endswith("/_history") or "_getpages" in u.params]) == 2
    # o3's (older) deletion is the re-crawl's; one newer than the history's newest is the next run's
    assert pages[-1].high_water == newest


def test_a_history_still_paging_at_half_the_budget_is_left_and_the_search_runs() -> None:
    later = WATERMARK + timedelta(seconds=30)
    server = Server(
        [[_deleted("Observation/o1", WATERMARK)], [_deleted("Observation/o2", WATERMARK)]],
        found=[_obs("o6", later)],
    )
    scope = replace(_scope(server, history=True, stored={"o1", "o2"}), deadline=time.monotonic())

    pages = _run(scope)

    assert [r.resource_id for r in _reads(pages)] == ["o1"]  # the first page, then left
    assert server.seen[-1].path == "/fhir/Observation"  # the change search ran


def test_a_history_failing_after_the_retries_is_left_and_the_search_still_runs() -> None:
    later = WATERMARK + timedelta(seconds=30)
    server = Server([[]], found=[_obs("o6", later)], history_status=503)

    pages = _run(_scope(server, history=True, stored={"o1"}, attempts=1))

    assert _reads(pages) == []
    assert pages[-1].high_water == later
    assert server.seen[-1].path == "/fhir/Observation"


def test_deletions_are_told_by_a_numeric_410_or_an_empty_resource_and_checked_by_id_only() -> None:
    t = WATERMARK + timedelta(seconds=10)
    server = Server(
        [
            [
                {"fullUrl": f"{BASE}/Observation/o1", "response": {"status": 410}},
                {**_deleted("Observation/o2", t), "resource": {}},
                {"fullUrl": f"{BASE}/Observation/o3", "response": {"status": True}},  # no status at all
            ]
        ],
        found=[],
    )
    asked: list[list[str]] = []

    def live_ids(rtype: str, ids: list[str]) -> set[str]:
        asked.append(sorted(ids))
        return set(ids)

    def everything(rtype: str, patient: str | None) -> set[str]:
        raise AssertionError("every stored id of the type was loaded")

    scope = replace(_scope(server, history=True, stored=set()), live_ids=live_ids, stored_ids=everything)
    pages = _run(scope)

    assert sorted(r.resource_id for r in _reads(pages)) == ["o1", "o2"]
    assert asked == [["o1", "o2"]]


def test_a_history_refused_though_advertised_leaves_deletions_to_the_re_crawl_and_the_search_runs() -> None:
    later = WATERMARK + timedelta(seconds=30)
    server = Server([[]], found=[_obs("o6", later)], history_status=404)

    pages = _run(_scope(server, history=True, stored={"o1"}))

    assert _reads(pages) == []
    assert [u.path for u in server.seen] == ["/fhir/Observation/_history", "/fhir/Observation"]
    assert pages[-1].high_water == later

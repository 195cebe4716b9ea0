"""The hook routes are served from ASGI directly, ahead of the framework's middleware stack (issue 10
item 9: that stack cost ~40 % of a request's CPU); everything else still goes through FastAPI."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.endpoints import HookRoute, hook_route, serve_hook
from app.api.main import create_app
from tests.app.api.conftest import Facilities, bearer, settings_for, shared_secret
from tests.app.api.fixtures_shapes import dumps
from tests.fixtures import backport_id_only

pytestmark = pytest.mark.anyio


class Seen:
    """A middleware that records the paths it is asked to serve."""

    paths: list[str] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            Seen.paths.append(scope["path"])
        await self.app(scope, receive, send)


async def test_hook_routes_skip_the_middleware_stack_and_other_routes_keep_it(
    api_database_url: str, redis_prefix: str, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    app = create_app(settings_for(api_database_url, redis_prefix))
    app.add_middleware(Seen)
    Seen.paths = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver.test") as client:
            body = dumps(backport_id_only([(1, "Patient/p1")]))
            assert (await client.post(f"/hooks/{fid}", content=body, headers=bearer())).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
            # Not a hook route: the framework answers, as before.
            assert (await client.get(f"/hooks/{fid}")).status_code == 405
            assert (await client.post(f"/hooks/{fid}/Patient")).status_code == 404
    assert Seen.paths == ["/healthz", f"/hooks/{fid}", f"/hooks/{fid}/Patient"]
    assert len(facilities.inbox(fid)) == 1


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/hooks/f1", HookRoute("f1")),
        ("PUT", "/hooks/f1/Patient/p1", HookRoute("f1", "Patient", "p1")),
        ("DELETE", "/hooks/f1/Patient/p1", HookRoute("f1", "Patient", "p1")),
        ("GET", "/hooks/f1", None),
        ("POST", "/hooks/f1/Patient/p1", None),
        ("PUT", "/hooks/f1", None),
        ("POST", "/hooks/", None),
        ("PUT", "/hooks/f1//p1", None),
        ("POST", "/hooksx/f1", None),
        ("POST", "/metrics", None),
    ],
)
def test_which_requests_are_hook_routes(method: str, path: str, route: HookRoute | None) -> None:
    assert hook_route({"type": "http", "method": method, "path": path}) == route


class FailingReceiver:
    async def receive(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")


async def test_an_unexpected_error_is_answered_500_with_an_operation_outcome() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/hooks/f1", "headers": []}
    await serve_hook(FailingReceiver(), HookRoute("f1"), scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 500
    assert b"OperationOutcome" in sent[1]["body"]

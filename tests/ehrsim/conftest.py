"""Shared helpers for the simulator's tests.

Tests are async (anyio plugin, asyncio backend) and talk to the app through ``httpx.ASGITransport``
with its lifespan entered explicitly, so the senders run in the test's event loop. Helpers are
exposed as fixtures, not imported, because ``tests/`` is not a package.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from ehrsim.config import SimConfig
from ehrsim.server import create_app

FAC = "general"
CLIENT_ID = "ingest"
ORIGIN = "http://testserver"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# The types of the fixtures below, for the tests' parameters.
MakeConfig = Callable[..., SimConfig]
Form = Callable[..., dict[str, str]]
Run = Callable[[Starlette], AbstractAsyncContextManager[httpx.AsyncClient]]
OpenSim = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
Wait = Callable[..., Awaitable[None]]
Serve = Callable[[Starlette], AbstractContextManager[str]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the sender is asyncio code


class FakeClock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="session")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def make_config(private_key: rsa.RSAPrivateKey) -> MakeConfig:
    """A one-facility config; keyword arguments override facility fields."""

    def make(**facility: Any) -> SimConfig:
        client = {
            "client_id": CLIENT_ID,
            "public_key_pem": public_pem(private_key),
            "scopes": ["system/*.read"],
        }
        base: dict[str, Any] = {
            "id": FAC,
            "seed": 1,
            "patients": 5,
            "token_lifetime_s": 300,
            "clients": [client],
        }
        return SimConfig.model_validate({"facilities": [{**base, **facility}]})

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class Assertions:
    """Builds RS384 client assertions (by default for the registered key, valid for 240 s)."""

    key: rsa.RSAPrivateKey
    clock: Callable[[], float]

    def __call__(
        self,
        aud: str = f"{ORIGIN}/{FAC}/oauth2/token",
        *,
        key: rsa.RSAPrivateKey | None = None,
        exp_in: float = 240,
        jti: str | None = None,
        iss: str = CLIENT_ID,
    ) -> str:
        claims = {
            "iss": iss,
            "sub": iss,
            "aud": aud,
            "exp": int(self.clock() + exp_in),
            "jti": jti or str(uuid.uuid4()),
        }
        return jwt.encode(claims, key or self.key, algorithm="RS384", headers={"kid": "k1", "typ": "JWT"})


@pytest.fixture
def assertion(private_key: rsa.RSAPrivateKey, clock: FakeClock) -> Assertions:
    return Assertions(private_key, clock)


def token_form(client_assertion: str, scope: str = "system/*.read") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        "scope": scope,
    }


@pytest.fixture
def form() -> Form:
    return token_form


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan (senders) running, and a client talking to it in-process."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client,
    ):
        yield client


@pytest.fixture
def run() -> Run:
    return running


@pytest.fixture
async def sim(make_config: MakeConfig, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """The simulator (one facility, 5 patients, no webhook) on the fake clock."""
    async with running(create_app(make_config(), clock=clock)) as client:
        yield client


async def login(client: httpx.AsyncClient, client_assertion: str) -> httpx.AsyncClient:
    response = await client.post(f"/{FAC}/oauth2/token", data=token_form(client_assertion))
    assert response.status_code == 200, response.text
    client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    return client


@pytest.fixture
async def authed(sim: httpx.AsyncClient, assertion: Assertions) -> httpx.AsyncClient:
    """``sim`` sending a valid bearer token."""
    return await login(sim, assertion())


async def eventually(predicate: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + within_s
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within_s} s")
        await asyncio.sleep(0.005)


@pytest.fixture
def wait() -> Wait:
    return eventually


@dataclass
class Recorder:
    """An ``httpx.MockTransport`` handler recording notifications; answers ``statuses`` in turn, then
    ``status``."""

    status: int = 200
    statuses: list[int] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.statuses.pop(0) if self.statuses else self.status)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port in a thread; yields its origin."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not server.started:
            assert thread.is_alive(), "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


@pytest.fixture
def server() -> Serve:
    return serve

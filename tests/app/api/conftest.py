"""The receiver in-process (httpx.ASGITransport + the app's own lifespan) against a real Postgres.

The app commits with its own connections, so these tests cannot use the rolled-back ``db`` session:
they get a database of their own (created and migrated once per session, dropped at the end), and
every test registers facilities under fresh ids, so tests never see each other's rows.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from app.api.main import create_app
from app.settings import Settings
from tests.conftest import REDIS_URL, engine_for, migrated_database
from tests.fixtures import BASE

SECRET = "s3cret-current"
OLD_SECRET = "s3cret-previous"
WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-key-0123456789").decode()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Facilities:
    engine: Engine
    created: list[str]

    def add(self, webhook: dict[str, Any] | None, *, vendor: str = "generic", base_url: str = BASE) -> str:
        facility_id = f"fac-{uuid.uuid4().hex[:10]}"
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO facilities (id, vendor, base_url, auth, webhook) "
                    "VALUES (:id, :vendor, :base, CAST(:auth AS jsonb), CAST(:webhook AS jsonb))"
                ),
                {
                    "id": facility_id,
                    "vendor": vendor,
                    "base": base_url,
                    "auth": '{"client_id": "c", "private_key": {"file": "/nonexistent"}}',
                    "webhook": json.dumps(webhook or {}),
                },
            )
        self.created.append(facility_id)
        return facility_id

    def inbox(self, facility_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    text("SELECT * FROM inbox WHERE facility_id = :f ORDER BY id"), {"f": facility_id}
                )
            )

    def ledger(self, facility_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    text("SELECT * FROM subscription_ledger WHERE facility_id = :f ORDER BY subscription"),
                    {"f": facility_id},
                )
            )

    def quarantine(self, facility_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(text("SELECT * FROM quarantine WHERE facility_id = :f"), {"f": facility_id})
            )


@pytest.fixture(scope="session")
def api_database_url(run_id: str) -> Iterator[str]:
    with migrated_database(f"{run_id}_api") as url:
        yield url


@pytest.fixture(scope="session")
def api_engine(api_database_url: str) -> Iterator[Engine]:
    with engine_for(api_database_url) as engine:
        yield engine


@pytest.fixture
def facilities(api_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Facilities:
    monkeypatch.setenv("EHRI_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("EHRI_TEST_HOOK_OLD_SECRET", OLD_SECRET)
    monkeypatch.setenv("EHRI_TEST_HOOK_WHSEC", WHSEC)
    return Facilities(api_engine, [])


def shared_secret(**extra: Any) -> dict[str, Any]:
    return {
        "header": "Authorization",
        "scheme": "Bearer",
        "secret": {"env": "EHRI_TEST_HOOK_SECRET"},
        **extra,
    }


def signed(method: str, **extra: Any) -> dict[str, Any]:
    env = "EHRI_TEST_HOOK_WHSEC" if method == "standard-webhooks" else "EHRI_TEST_HOOK_SECRET"
    return {"method": method, "secret": {"env": env}, **extra}


def settings_for(database_url: str, redis_prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": REDIS_URL,
        "redis_prefix": redis_prefix,
        "queue": f"{redis_prefix}ingest",
        "log_format": "json",
        "log_level": os.environ.get("EHRI_TEST_LOG_LEVEL", "WARNING"),
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan started, and a client speaking to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver.test") as client:
            yield client


@pytest.fixture
async def receiver(api_database_url: str, redis_prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running(settings_for(api_database_url, redis_prefix)) as client:
        yield client


def bearer(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", "Content-Type": "application/fhir+json"}

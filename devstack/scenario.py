"""One complete local deployment: a fresh database and Redis key space, keys, configs, ehrsim, the
receiver and workers. Used by the end-to-end tests, ``make demo`` and the benchmarks."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engine import make_engine, make_sessionmaker
from app.facilities.service import apply_facilities, load_facilities_file
from app.fhir import jsonwire
from devstack.database import clear_redis_prefix, create_database, drop_database
from devstack.keys import write_keypair
from devstack.ledger import LedgerReport, check_ledger
from devstack.processes import Stack, free_port
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile


@dataclass
class Scenario:
    workdir: Path
    database_url: str
    redis_url: str
    redis_prefix: str
    facilities: list[str]
    sim_port: int = field(default_factory=free_port)
    receiver_port: int = field(default_factory=free_port)
    stack: Stack | None = None
    # Our facilities' politeness ``limits`` (None: the product's defaults, 20 requests/s per facility).
    limits: dict[str, Any] | None = None
    _webhook_env: dict[str, str] = field(default_factory=dict)

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.receiver_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            EHRI_DATABASE_URL=self.database_url,
            EHRI_REDIS_URL=self.redis_url,
            EHRI_REDIS_PREFIX=self.redis_prefix,
            EHRI_QUEUE=f"{self.redis_prefix}ingest",
            EHRI_LOG_FORMAT="json",
            EHRI_SWEEP_INTERVAL="PT2S",
            EHRI_RETRY_BASE="PT0.5S",
        )
        env.update(self._webhook_env)
        return env

    # -- setup ---------------------------------------------------------------------------------------

    def prepare(
        self,
        *,
        patients: int = 0,
        seed: int = 7,
        sender_concurrency: int = 8,
        profile: str = "generic",
        profile_overrides: dict[str, Any] | None = None,
    ) -> None:
        """Create the database (migrated), keys and both config files; register the facilities.

        ehrsim's seed ``patients`` predate the subscription and are never notified: only a backfill finds
        them. Scenarios that check the webhook path alone start from an empty EHR (the default).
        ``profile``: the ehrsim profile every facility runs (``ehrsim.profiles``), our facilities naming the
        vendor of the same name with its MRN system (a profile with no Subscription support gets no sender:
        nothing is pushed); ``profile_overrides``: ehrsim profile fields to change."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        create_database(self.database_url)
        sim_facilities: list[dict[str, Any]] = []
        our_facilities: list[dict[str, Any]] = []
        for index, fid in enumerate(self.facilities):
            private, public = write_keypair(self.workdir, fid)
            secret = secrets.token_urlsafe(24)
            env_name = f"EHRI_DEMO_WEBHOOK_SECRET_{index}"
            self._webhook_env[env_name] = secret
            sim_facilities.append(
                {
                    "id": fid,
                    "profile": profile,
                    **({"profile_overrides": profile_overrides} if profile_overrides else {}),
                    "seed": seed + index,
                    "patients": patients,
                    "clients": [
                        {
                            "client_id": "ehr-ingest",
                            "public_key_file": str(public),
                            "scopes": ["system/*.read"],
                        }
                    ],
                    "webhook": {
                        "url": f"{self.receiver_url}/hooks/{fid}",
                        "headers": {"Authorization": f"Bearer {secret}"},
                        "subscription_id": f"sub-{fid}",
                        "concurrency": sender_concurrency,
                        "max_attempts": 8,
                    },
                }
            )
            our_facilities.append(
                {
                    "id": fid,
                    "vendor": profile,
                    **({"mrn_system": mrn_system(get_profile(profile), fid)} if profile != "generic" else {}),
                    "base_url": f"{self.sim_url}/{fid}/fhir",
                    "auth": {
                        "client_id": "ehr-ingest",
                        "private_key": {"file": str(private)},
                        "algorithm": "RS384",
                        "scopes": ["system/*.read"],
                    },
                    "webhook": {"header": "Authorization", "scheme": "Bearer", "secret": {"env": env_name}},
                    **({"limits": self.limits} if self.limits is not None else {}),
                }
            )
        if get_profile(profile).notification is None:  # no Subscription support: nothing is pushed
            for sim in sim_facilities:
                del sim["webhook"]
        (self.workdir / "ehrsim.yaml").write_text(
            yaml.safe_dump({"public_base_url": self.sim_url, "facilities": sim_facilities})
        )
        (self.workdir / "facilities.yaml").write_text(yaml.safe_dump({"facilities": our_facilities}))
        engine = make_engine(self.database_url, pool_size=1)
        try:
            with make_sessionmaker(engine).begin() as session:
                apply_facilities(session, load_facilities_file(self.workdir / "facilities.yaml"))
        finally:
            engine.dispose()

    def start(
        self, *, workers: int = 1, concurrency: int = 2, beat: bool = True, env: dict[str, str] | None = None
    ) -> Stack:
        """``env``: settings to add to or override in ``env()`` for every process (``EHRI_LOG_LEVEL``...)."""
        self.stack = Stack(self.workdir, {**self.env(), **(env or {})})
        self.stack.start_ehrsim(self.workdir / "ehrsim.yaml", self.sim_port)
        self.stack.start_receiver(self.receiver_port)
        for n in range(workers):
            self.stack.start_worker(f"worker{n}", concurrency)
        if beat:
            self.stack.start_beat()
        return self.stack

    def teardown(self, *, drop: bool = True) -> None:
        if self.stack is not None:
            self.stack.stop()
        clear_redis_prefix(self.redis_url, self.redis_prefix)
        if drop:
            drop_database(self.database_url)

    # -- driving and checking ------------------------------------------------------------------------

    def make_changes(self, facility_id: str, changes: int) -> None:
        response = httpx.post(
            f"{self.sim_url}/_admin/{facility_id}/activity", json={"changes": changes}, timeout=60
        )
        response.raise_for_status()

    def webhook_secret(self, facility_id: str) -> str:
        """The shared secret ehrsim's sender presents for ``facility_id`` (for load generators)."""
        return self._webhook_env[f"EHRI_DEMO_WEBHOOK_SECRET_{self.facilities.index(facility_id)}"]

    def sender_counters(self, facility_id: str) -> dict[str, int]:
        response = httpx.get(f"{self.sim_url}/_admin/{facility_id}/notifications", timeout=10)
        response.raise_for_status()
        return {k: int(v) for k, v in response.json().items()}

    def truth(self, facility_id: str, *, content: bool = False) -> list[dict[str, Any]]:
        """ehrsim's resources (``content``: with each live one's body, decoded as the product decodes
        FHIR, decimals exact, so that content hashes compare)."""
        params = {"content": "true"} if content else {}
        response = httpx.get(f"{self.sim_url}/_admin/{facility_id}/truth", params=params, timeout=30)
        response.raise_for_status()
        resources: list[dict[str, Any]] = jsonwire.loads(response.content)["resources"]
        return resources

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run one statement in the scenario's database (committed); its rows, if it returns any."""
        engine = make_engine(self.database_url, pool_size=1)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def ledger(self, facility_id: str) -> LedgerReport:
        engine = make_engine(self.database_url, pool_size=1)
        try:
            with make_sessionmaker(engine)() as session:
                return check_ledger(session, facility_id, self.truth(facility_id, content=True))
        finally:
            engine.dispose()

    def wait_for_ledger(self, facility_id: str, *, timeout: float) -> LedgerReport:
        """Poll until nothing is pending (sender and inbox) and the ledger holds every change, or until
        ``timeout``; the report returned then tells what is still pending apart from what is lost."""
        deadline = time.monotonic() + timeout
        while True:
            undelivered = self.sender_counters(facility_id)["pending"]
            report = self.ledger(facility_id)
            report.undelivered = undelivered
            if report.ok or time.monotonic() >= deadline:
                return report
            time.sleep(0.25)


def scenario_for(
    workdir: Path, *, base_database_url: str, redis_url: str, facilities: list[str], name: str | None = None
) -> Scenario:
    name = name or f"ehri_{uuid.uuid4().hex[:10]}"
    database_url = make_url(base_database_url).set(database=name).render_as_string(hide_password=False)
    return Scenario(workdir, database_url, redis_url, f"{name}:", facilities)

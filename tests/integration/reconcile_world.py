"""An ehrsim of its own (one facility per profile, sending nothing) and a database of its own (the
reconciler commits page by page) for the reconciler's integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.ehr.pool import EHRClientPool
from app.facilities.schemas import FacilitiesFile
from app.facilities.service import apply_facilities
from app.reconcile.service import reconcile_facility
from app.settings import Settings
from devstack.database import clear_redis_prefix
from devstack.keys import write_keypair
from devstack.processes import Stack, free_port
from ehrsim.generator import mrn_system
from ehrsim.profiles import get_profile
from tests.conftest import REDIS_URL, engine_for, migrated_database

# facility id → (ehrsim profile, the types reconciled)
FACILITIES = {
    "rc-generic": ("generic", ["Patient", "Observation", "Condition"]),
    "rc-hapi": ("hapi", ["Patient", "Observation", "Condition", "Encounter"]),
    "rc-oracle": ("oracle", ["Patient", "Observation", "Condition", "MedicationRequest"]),
    "rc-athena": ("athena", ["Patient", "Observation", "Condition"]),
    "rc-epic": ("epic", ["Patient", "Observation", "Condition", "MedicationRequest"]),
    # bulk-since with a full export on every run (the re-crawl): MEDITECH lists no deletions
    "rc-meditech": ("meditech", ["Patient", "Observation", "Condition"]),
}
#: Facilities whose re-crawl is an hour away after the first run: their change searches are what runs.
CHANGE_SEARCH_ONLY = {
    "rc-oracle-lu": ("oracle", ["Patient", "Observation", "Condition"]),
    "rc-athena-lu": ("athena", ["Patient", "Observation", "Condition"]),
}
#: ``last-updated`` with the re-crawl an hour away after the first run, probed first: where the EHR has
#: type-level ``_history`` (HAPI) deletions are found in it; elsewhere (Medplum: instance history only;
#: generic) they wait.
HISTORY = {
    "rc-hapi-hist": ("hapi", ["Observation"]),
    "rc-medplum-hist": ("medplum", ["Observation"]),
    "rc-generic-hist": ("generic", ["Observation"]),
}
#: More patients than Epic lists in one Patient search (4127 past 100).
WIDE = {"rc-epic-wide": ("epic", ["Patient"])}
PATIENTS = {"rc-epic-wide": 130}
#: bulk-since exporting ``_since`` the watermark (re-crawl an hour away), of a configured Group, from a
#: MEDITECH that lists deletions (``bulk_deleted``: unverified for the vendor, off in its profile).
BULK_SINCE = {"rc-meditech-since": ("meditech", ["Patient", "Observation", "Condition"])}
#: bulk-since of a cohort Group naming some of the patients only (its members set by the tests): what
#: reaches Postgres is the members' and nobody else's.
BULK_GROUP = {"rc-meditech-group": ("meditech", ["Patient", "Observation", "Condition"])}
#: Per-patient polling of a cohort known only from a configured Group: a server that serves Group reads
#: (the generic profile), Patients not reconciled, so no patient is known any other way.
COHORT_GROUP = {"rc-group": ("generic", ["Observation", "Condition"])}
ALL = {**FACILITIES, **CHANGE_SEARCH_ONLY, **HISTORY, **BULK_SINCE, **BULK_GROUP, **WIDE, **COHORT_GROUP}
#: Per facility: ehrsim profile overrides, and keys of our ``reconcile`` block, beyond the defaults.
SIM_OVERRIDES: dict[str, dict[str, Any]] = {
    "rc-meditech-since": {"bulk_deleted": True},
    "rc-meditech-group": {"bulk_deleted": True},
}
RECONCILE_EXTRA: dict[str, dict[str, Any]] = {
    "rc-meditech-since": {"group": "g-all"},
    "rc-meditech-group": {"group": "g-few"},
    "rc-group": {"group": "g-cohort", "strategy": {"*": "patient-last-updated"}},
}
#: Per facility: the Groups ehrsim starts with (``members`` null: every live patient; an empty list: set
#: by the tests through its admin API). A Group-level export of a Group ehrsim lacks answers 404.
SIM_GROUPS: dict[str, list[dict[str, Any]]] = {
    "rc-group": [{"id": "g-cohort", "members": []}],
    "rc-meditech-since": [{"id": "g-all", "members": None}],
    "rc-meditech-group": [{"id": "g-few", "members": []}],
}


class Recording(httpx.BaseTransport):
    """The real transport, remembering each request's URL and answer status (to check query shapes)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        self.seen.append((str(request.url), response.status_code))
        return response

    def close(self) -> None:
        self._inner.close()


@dataclass
class World:
    sim_url: str
    sessions: sessionmaker[Session]
    clients: EHRClientPool
    database_url: str
    transport: Recording
    #: What ``reconcile`` runs with unless given other settings: this world's Redis prefix (the bulk
    #: export lease), ehrsim's bulk ``Retry-After`` (MEDITECH's 5 s) honoured up to 50 ms.
    settings: Settings

    def admin(self, facility: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.sim_url}/_admin/{facility}/{path}"
        response = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=30)
        response.raise_for_status()
        return response.json()

    def reconcile(self, facility: str, settings: Settings | None = None, **kwargs: Any) -> Any:
        return reconcile_facility(
            self.sessions, self.clients.get, facility, settings or self.settings, **kwargs
        )

    def stored_live(self, facility: str) -> dict[tuple[str, str], str | None]:
        """The facility's live stored resources: (type, id) -> version id."""
        with self.sessions() as session:
            rows = session.execute(
                text(
                    "SELECT resource_type, resource_id, version_id FROM resources"
                    " WHERE facility_id = :f AND NOT deleted"
                ),
                {"f": facility},
            )
            return {(r.resource_type, r.resource_id): r.version_id for r in rows}


@contextmanager
def reconcile_world(workdir: Path) -> Iterator[World]:
    """ehrsim with ``FACILITIES`` and a migrated database with them registered; stopped and dropped after."""
    private, public = write_keypair(workdir, "client")
    port = free_port()
    sim_facilities = [
        {
            "id": fid,
            "profile": profile,
            "seed": 5,
            "patients": PATIENTS.get(fid, 3),
            "profile_overrides": {"token_flaky_400_rate": 0, **SIM_OVERRIDES.get(fid, {})},
            "groups": SIM_GROUPS.get(fid, []),
            "clients": [
                {"client_id": "ehr-ingest", "public_key_file": str(public), "scopes": ["system/*.read"]}
            ],
        }
        for fid, (profile, _) in ALL.items()
    ]
    config = workdir / "ehrsim.yaml"
    config.write_text(
        yaml.safe_dump({"public_base_url": f"http://127.0.0.1:{port}", "facilities": sim_facilities})
    )
    ours = FacilitiesFile.model_validate(
        {
            "facilities": [
                {
                    "id": fid,
                    "vendor": profile,
                    "base_url": f"http://127.0.0.1:{port}/{fid}/fhir",
                    "mrn_system": mrn_system(get_profile(profile), fid),
                    "auth": {"client_id": "ehr-ingest", "private_key": {"file": str(private)}},
                    # a re-crawl on every run: deletions and silent edits are found at once
                    "reconcile": {
                        "types": types,
                        "recrawl_interval": "PT0.001S" if fid in FACILITIES else "PT1H",
                        **RECONCILE_EXTRA.get(fid, {}),
                    },
                }
                for fid, (profile, types) in ALL.items()
            ]
        }
    )
    stack = Stack(workdir, dict(os.environ))
    stack.start_ehrsim(config, port)
    with migrated_database(f"ehri_rc_{port}") as url, engine_for(url) as engine:
        sessions = sessionmaker(engine)
        with sessions.begin() as session:
            apply_facilities(session, ours)
        transport = Recording()
        clients = EHRClientPool(timeout_s=10, transport=transport)
        settings = Settings(
            redis_url=REDIS_URL,
            redis_prefix=f"ehri-rc-{port}:",
            bulk_retry_after_cap=timedelta(milliseconds=50),
            bulk_kickoff_wait=timedelta(seconds=2),
        )
        try:
            yield World(f"http://127.0.0.1:{port}", sessions, clients, url, transport, settings)
        finally:
            clients.close()
            stack.stop()
            clear_redis_prefix(REDIS_URL, settings.redis_prefix)

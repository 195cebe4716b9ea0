from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.scenario import Scenario, scenario_for
from tests.conftest import BASE_DATABASE_URL, REDIS_URL


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    """A fresh database, Redis key space and configs; the test starts the processes it needs."""
    sc = scenario_for(
        tmp_path, base_database_url=BASE_DATABASE_URL, redis_url=REDIS_URL, facilities=["fac-e2e"]
    )
    sc.prepare()
    try:
        yield sc
    finally:
        failed_logs = {p.name: p.log_tail(30) for p in (sc.stack.procs if sc.stack else [])}
        sc.teardown()
        for name, tail in failed_logs.items():
            print(f"--- {name}\n{tail}")  # shown by pytest only when the test failed

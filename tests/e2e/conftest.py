from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.scenario import Scenario, scenario_for
from tests.conftest import BASE_DATABASE_URL, REDIS_URL

#: Prepares a fresh scenario: (``limits`` of our facility or None, then ``Scenario.prepare`` keywords).
MakeScenario = Callable[..., Scenario]


@pytest.fixture
def make_scenario(tmp_path: Path) -> Iterator[MakeScenario]:
    """A fresh database, Redis key space and configs, prepared as the test asks (ehrsim's seed patients,
    our facility's politeness ``limits``); the test starts the processes it needs."""
    made: list[Scenario] = []

    def make(*, limits: dict[str, Any] | None = None, **prepare: Any) -> Scenario:
        sc = scenario_for(
            tmp_path, base_database_url=BASE_DATABASE_URL, redis_url=REDIS_URL, facilities=["fac-e2e"]
        )
        sc.limits = limits
        made.append(sc)
        sc.prepare(**prepare)
        return sc

    try:
        yield make
    finally:
        for sc in made:
            failed_logs = {p.name: p.log_tail(30) for p in (sc.stack.procs if sc.stack else [])}
            sc.teardown()
            for name, tail in failed_logs.items():
                print(f"--- {name}\n{tail}")  # shown by pytest only when the test failed


@pytest.fixture
def scenario(make_scenario: MakeScenario) -> Scenario:
    """A fresh scenario with an empty EHR."""
    return make_scenario()

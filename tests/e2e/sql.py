"""One SQL value from a scenario's database, read on a connection of its own (for polling conditions)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.db.engine import make_engine
from devstack.scenario import Scenario


def scalar(scenario: Scenario, sql: str) -> Any:
    engine = make_engine(scenario.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()

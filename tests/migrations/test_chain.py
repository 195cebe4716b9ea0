"""The whole chain runs both ways: every revision's downgrade undoes what later ones rely on."""

from __future__ import annotations

import uuid

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from app.db.migrate import alembic_config
from tests.conftest import engine_for, migrated_database


def test_head_down_to_base_and_up_to_head_again() -> None:
    with migrated_database(f"ehri_test_chain_{uuid.uuid4().hex[:8]}") as url:
        config = alembic_config(url)
        head = ScriptDirectory.from_config(config).get_current_head()
        command.downgrade(config, "base")
        command.upgrade(config, "head")
        with engine_for(url) as engine, engine.connect() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head
            views = set(conn.scalars(text("SELECT viewname FROM pg_views WHERE schemaname = 'public'")))
        assert {"current_resources", "observations", "blood_pressure_readings"} <= views

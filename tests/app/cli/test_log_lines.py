"""The CLI as a real process with ``EHRI_LOG_FORMAT=json``: its log lines are JSON on stderr, its results
stay plain text on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.conftest import make_facility

CLI = Path(sys.executable).parent / "ehr-ingest"


def test_a_warning_logged_by_a_command_is_a_json_line_on_stderr(
    cli_database_url: str, cli_engine: Engine, redis_prefix: str
) -> None:
    with Session(cli_engine) as session:
        make_facility(session, "fac-l")
        session.commit()
    with cli_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id, status, reason, attempts)"
                " VALUES ('fac-l', 'k1', 'Patient', 'p1', 'dead', 'ehr_http_403', 8)"
            )
        )
    env = {
        **os.environ,
        "EHRI_DATABASE_URL": cli_database_url,
        "EHRI_REDIS_URL": "redis://127.0.0.1:1/0",  # refused: the doorbell fails and says so in the log
        "EHRI_REDIS_PREFIX": redis_prefix,
        "EHRI_LOG_FORMAT": "json",
    }

    result = subprocess.run(
        [str(CLI), "dead-letters", "replay", "--facility", "fac-l"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "fac-l: 1 replayed" in result.stdout
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert [(r["event"], r["level"]) for r in records] == [("queue.doorbell_failed", "warning")]

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, text

from tests.app.cli.conftest import UNREACHABLE_URL, Invoke, assert_one_line_error, registered_facility


@pytest.fixture
def facility(cli_engine: Engine) -> str:
    return registered_facility(cli_engine, "fac-q")


def _quarantine(engine: Engine, facility_id: str, body: object) -> int:
    with engine.begin() as conn:
        return int(
            conn.scalar(
                text(
                    "INSERT INTO quarantine (facility_id, reason, detail, method, path, body_sha256, body)"
                    " VALUES (:fid, 'not_a_notification', 'no resourceType', 'POST', '/hooks/fac-q', :sha,"
                    " CAST(:body AS jsonb)) RETURNING id"
                ),
                {"fid": facility_id, "sha": "0" * 64, "body": json.dumps(body)},
            )
        )


def test_list_shows_reasons_and_count_but_never_the_body(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    row_id = _quarantine(cli_engine, facility, {"name": "Jane Marker-Doe"})

    result = invoke("quarantine", "list", "--facility", facility)

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith(str(row_id)))
    assert "fac-q" in row
    assert "not_a_notification" in row
    assert "/hooks/fac-q" in row
    assert "Marker-Doe" not in result.stdout
    assert result.stdout.splitlines()[-1] == "1 quarantined"


def test_list_of_an_unknown_facility_exits_2(invoke: Invoke, facility: str) -> None:
    result = invoke("quarantine", "list", "--facility", "no-such-facility")

    assert_one_line_error(result, 2, "unknown facility 'no-such-facility'")


def test_list_without_postgres_exits_3(invoke: Invoke) -> None:
    result = invoke("quarantine", "list", database_url=UNREACHABLE_URL)

    assert_one_line_error(result, 3, "cannot connect to Postgres")

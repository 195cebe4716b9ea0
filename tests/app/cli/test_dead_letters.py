from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from tests.app.cli.conftest import UNREACHABLE_URL, Invoke, assert_one_line_error, registered_facility


def _dead_row(engine: Engine, facility_id: str, *, reason: str, detail: str = "") -> int:
    with engine.begin() as conn:
        return int(
            conn.scalar(
                text(
                    "INSERT INTO inbox (facility_id, dedup_key, focus_type, focus_id, status, reason,"
                    " detail, attempts, done_at)"
                    " VALUES (:fid, :key, 'Patient', 'p1', 'dead', :reason, :detail, 8, now()) RETURNING id"
                ),
                {"fid": facility_id, "key": f"{facility_id}:{reason}", "reason": reason, "detail": detail},
            )
        )


def _status(engine: Engine, row_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.scalar(text("SELECT status FROM inbox WHERE id = :id"), {"id": row_id}))


@pytest.fixture
def facility(cli_engine: Engine) -> str:
    return registered_facility(cli_engine, "fac-d")


def test_list_shows_dead_rows_with_reason_and_the_summary(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    row_id = _dead_row(cli_engine, facility, reason="ehr_http_403")

    result = invoke("dead-letters", "list", "--facility", facility)

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith(str(row_id)))
    assert "fac-d" in row
    assert "ehr_http_403" in row
    assert result.stdout.splitlines()[-1] == "dead letters by facility/reason: fac-d/ehr_http_403: 1"


def test_list_prints_details_as_text_not_markup(invoke: Invoke, cli_engine: Engine, facility: str) -> None:
    _dead_row(cli_engine, facility, reason="x", detail="[bold]kept[/bold]")

    result = invoke("dead-letters", "list")

    assert "[bold]kept" in result.stdout


def test_list_of_an_unknown_facility_exits_2_naming_the_known_ones(invoke: Invoke, facility: str) -> None:
    result = invoke("dead-letters", "list", "--facility", "no-such-facility")

    assert_one_line_error(result, 2, "unknown facility 'no-such-facility'", "known: fac-d")


def test_list_without_postgres_exits_3(invoke: Invoke) -> None:
    result = invoke("dead-letters", "list", database_url=UNREACHABLE_URL)

    assert_one_line_error(result, 3, "cannot connect to Postgres")


def test_replay_by_id_requeues_the_row_and_rings_the_doorbell(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    row_id = _dead_row(cli_engine, facility, reason="ehr_http_403")

    result = invoke("dead-letters", "replay", str(row_id))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "fac-d: 1 replayed"
    assert _status(cli_engine, row_id) == "pending"


def test_replay_when_redis_is_down_still_commits_and_says_the_sweeper_will_do_it(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    row_id = _dead_row(cli_engine, facility, reason="ehr_http_403")

    result = invoke("dead-letters", "replay", "--facility", facility, redis_url="redis://127.0.0.1:1/0")

    assert result.exit_code == 0, result.output
    assert "the sweeper will pick them up" in result.stdout
    assert _status(cli_engine, row_id) == "pending"


def test_replay_matching_nothing_says_so(invoke: Invoke, facility: str) -> None:
    result = invoke("dead-letters", "replay", "--reason", "no_such_reason")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "nothing matched"


def test_replay_without_a_filter_refuses_with_exit_2(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    row_id = _dead_row(cli_engine, facility, reason="ehr_http_403")

    result = invoke("dead-letters", "replay")

    assert_one_line_error(result, 2, "refusing to replay everything blindly")
    assert _status(cli_engine, row_id) == "dead"


def test_replay_of_an_unknown_facility_exits_2(invoke: Invoke, facility: str) -> None:
    result = invoke("dead-letters", "replay", "--facility", "no-such-facility")

    assert_one_line_error(result, 2, "unknown facility")

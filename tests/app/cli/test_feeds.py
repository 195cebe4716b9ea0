from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, text

from tests.app.cli.conftest import Invoke, assert_one_line_error, registered_facility


@pytest.fixture
def facility(cli_engine: Engine) -> str:
    fid = registered_facility(cli_engine, "fac-f")
    with cli_engine.begin() as conn:
        # token_events has no foreign key: the ledger's truncation between tests leaves it
        conn.execute(text("DELETE FROM token_events WHERE facility_id = :f"), {"f": fid})
        conn.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, received_at, subscription, status)"
                " SELECT :f, 'k' || n, now() - n * interval '1 minute', 'Subscription/abc', 'done'"
                " FROM generate_series(1, 3) n"
            ),
            {"f": fid},
        )
        conn.execute(
            text(
                "INSERT INTO inbox (facility_id, dedup_key, received_at, subscription, status, reason,"
                " attempts, done_at) VALUES (:f, 'dead', now() - interval '5 minutes', 'Subscription/abc',"
                " 'dead', 'ehr_http_4xx', 1, now())"
            ),
            {"f": fid},
        )
        conn.execute(
            text("INSERT INTO token_events (facility_id, event, at) VALUES (:f, 'rejected', now())"),
            {"f": fid},
        )
    return fid


def test_the_table_shows_the_facility_and_each_source_then_the_conditions(
    invoke: Invoke, facility: str
) -> None:
    result = invoke("feeds")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    facility_row = next(line for line in lines if "│ facility " in line)
    assert "fac-f" in facility_row
    assert "1 (+1)" in facility_row  # dead letters, one of them new
    source_row = next(line for line in lines if "subscription:abc" in line)
    assert "│ 4 " in source_row  # events in the last hour
    assert any(line.startswith("critical token_failing fac-f facility:") for line in lines)
    assert any(line.startswith("warning dead_letters fac-f facility:") for line in lines)


def test_json_holds_the_health_and_the_conditions(invoke: Invoke, facility: str) -> None:
    result = invoke("feeds", "--json", "--facility", facility)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    [health] = document["facilities"]
    assert (health["facility_id"], health["dead_letters"], health["auth_failures"]) == ("fac-f", 1, 1)
    assert [s["source"] for s in health["sources"]] == ["subscription:abc"]
    assert health["sources"][0]["events_last_hour"] == 4
    assert {c["kind"] for c in document["conditions"]} == {"token_failing", "dead_letters"}


def test_the_facility_filter_leaves_the_others_out(invoke: Invoke, facility: str, cli_engine: Engine) -> None:
    registered_facility(cli_engine, "fac-g")

    result = invoke("feeds", "--json", "--facility", "fac-g")

    assert [h["facility_id"] for h in json.loads(result.stdout)["facilities"]] == ["fac-g"]


def test_an_unknown_facility_exits_2(invoke: Invoke, facility: str) -> None:
    assert_one_line_error(invoke("feeds", "--facility", "nope"), 2, "unknown facility 'nope'")

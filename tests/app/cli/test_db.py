from __future__ import annotations

from tests.app.cli.conftest import UNREACHABLE_URL, Invoke, assert_one_line_error


def test_upgrade_brings_the_database_to_head_and_is_idempotent(invoke: Invoke) -> None:
    first = invoke("db", "upgrade")
    again = invoke("db", "upgrade")

    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "database at revision head"


def test_upgrade_without_postgres_exits_3_without_the_password(invoke: Invoke) -> None:
    result = invoke("db", "upgrade", database_url=UNREACHABLE_URL)

    assert_one_line_error(result, 3, "cannot connect to Postgres at", "127.0.0.1:1")
    assert "s3cret-password" not in result.output


def test_upgrade_to_an_unknown_revision_is_a_usage_error(invoke: Invoke) -> None:
    result = invoke("db", "upgrade", "--revision", "no-such-revision")

    assert_one_line_error(result, 2, "no-such-revision")

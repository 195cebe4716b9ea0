"""Only what runs before uvicorn starts: a CliRunner test never starts the server."""

from __future__ import annotations

from tests.app.cli.conftest import Invoke


def test_help_lists_the_options(invoke: Invoke) -> None:
    result = invoke("serve", "--help")

    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--workers"):
        assert option in result.stdout


def test_a_port_out_of_range_is_a_usage_error_before_anything_starts(invoke: Invoke) -> None:
    result = invoke("serve", "--port", "70000")

    assert result.exit_code == 2, result.output
    assert "--port" in result.stderr
    assert "Traceback" not in result.output


def test_zero_workers_is_a_usage_error(invoke: Invoke) -> None:
    result = invoke("serve", "--workers", "0")

    assert result.exit_code == 2, result.output
    assert "--workers" in result.stderr

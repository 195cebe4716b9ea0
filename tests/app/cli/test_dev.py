"""The development commands: their help, and what they say where ehrsim/devstack are not installed
(the production image). Neither the simulator nor the demo is started here."""

from __future__ import annotations

import sys

import pytest

from tests.app.cli.conftest import Invoke, assert_one_line_error


@pytest.mark.parametrize(("command", "option"), [("sim", "--config"), ("demo", "--changes")])
def test_help(invoke: Invoke, command: str, option: str) -> None:
    result = invoke(command, "--help")

    assert result.exit_code == 0, result.output
    assert option in result.stdout


def test_sim_without_a_config_is_a_usage_error(invoke: Invoke) -> None:
    result = invoke("sim")

    assert result.exit_code == 2, result.output
    assert "--config" in result.stderr


def test_demo_without_devstack_installed_exits_2_saying_why(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail as if the package were absent (the production image).
    monkeypatch.setitem(sys.modules, "devstack", None)
    monkeypatch.setitem(sys.modules, "devstack.demo", None)

    result = invoke("demo")

    assert_one_line_error(result, 2, "development package 'devstack'")


def test_sim_without_ehrsim_installed_exits_2_saying_why(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ehrsim", None)

    result = invoke("sim", "--config", "ehrsim.yaml")

    assert_one_line_error(result, 2, "development package 'ehrsim'")

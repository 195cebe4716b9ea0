"""``facilities apply``, ``probe`` and ``show`` against ehrsim over real HTTP, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.app.cli import conftest as cli_fixtures
from tests.app.cli.conftest import Invoke, assert_one_line_error
from tests.integration.conftest import Sim

# The CLI's own database and runner (tests/app/cli), here beside ehrsim.
invoke = cli_fixtures.invoke
cli_database_url = cli_fixtures.cli_database_url
cli_engine = cli_fixtures.cli_engine
_empty_ledger = cli_fixtures._empty_ledger


def _yaml(tmp_path: Path, sim: Sim, profile: str, extra: str = "") -> Path:
    key = tmp_path / "client.pem"
    key.write_text(sim.private_key)
    path = tmp_path / "facilities.yaml"
    path.write_text(
        f"""
facilities:
  - id: {profile}
    vendor: {profile}
    base_url: {sim.base(profile)}
    auth:
      client_id: ehr-ingest
      private_key: {{file: {key}}}
{extra}
"""
    )
    return path


def test_apply_probes_and_show_prints_what_was_found_and_chosen(
    invoke: Invoke, tmp_path: Path, sim: Sim
) -> None:
    applied = invoke("facilities", "apply", _yaml(tmp_path, sim, "oracle"))
    shown = invoke("facilities", "show", "oracle")
    as_json = invoke("facilities", "show", "oracle", "--json")

    assert applied.exit_code == 0, applied.output
    assert applied.stdout.splitlines()[-1].startswith("probe oracle: ok, 8 types")
    assert shown.exit_code == 0, shown.output
    assert "ok" in shown.stdout.splitlines()[0]
    observation = next(line for line in shown.stdout.splitlines() if "│ Observation" in line)
    assert "patient-last-updated" in observation
    assert "patient(required)" in observation
    document = json.loads(as_json.stdout)
    assert document["strategies"]["Observation"]["strategy"] == "patient-last-updated"
    assert document["strategies"]["Observation"]["source"] == "adapter-default"
    assert document["capabilities"]["export"] == ["group"]


def test_a_yaml_override_is_applied_by_the_next_probe(
    invoke: Invoke, tmp_path: Path, sim: Sim, cli_engine: Engine
) -> None:
    path = _yaml(tmp_path, sim, "generic", "    change_detection: {Observation: bulk-since}")

    probed_at_apply = invoke("facilities", "apply", path)
    probed = invoke("facilities", "probe", "generic")

    assert probed_at_apply.exit_code == 0, probed_at_apply.output
    assert probed.exit_code == 0, probed.output
    with cli_engine.connect() as conn:
        query = text("SELECT resource_type, strategy FROM resource_capabilities")
        rows = {str(row[0]): str(row[1]) for row in conn.execute(query)}
    assert rows == {"Observation": "bulk-since", "Patient": "last-updated", "Condition": "last-updated"}


def _subscribing_yaml(tmp_path: Path, sim: Sim, profile: str, subscription: bool = True) -> Path:
    block = (
        "    subscription: {style: criteria, criteria: Observation, endpoint: 'http://127.0.0.1:9/hooks'}"
        if subscription
        else ""
    )
    extra = f"""    webhook:
      secret: {{env: CLI_SUBSCRIBE_SECRET}}
{block}"""
    path = _yaml(tmp_path, sim, profile, extra)
    text_ = path.read_text().replace(
        "      private_key:", "      scopes: [system/*.read, system/Subscription.cruds]\n      private_key:"
    )
    path.write_text(text_)
    return path


def test_subscribe_and_unsubscribe_through_the_cli_are_idempotent(
    invoke: Invoke, tmp_path: Path, sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_SUBSCRIBE_SECRET", "cli-secret")
    invoke("facilities", "apply", "--no-probe", _subscribing_yaml(tmp_path, sim, "hapi"))

    first = invoke("subscribe", "hapi")
    again = invoke("subscribe", "hapi")
    shown = invoke("facilities", "show", "hapi", "--json")
    removed = invoke("unsubscribe", "hapi")
    nothing = invoke("unsubscribe", "hapi")

    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("hapi: created Subscription/")
    assert json.loads(shown.stdout)["subscription"]["status"] == "active"
    assert again.stdout.startswith("hapi: unchanged Subscription/")
    assert "cli-secret" not in first.stdout + again.stdout
    assert removed.stdout.strip() == "hapi: removed"
    assert nothing.exit_code == 0
    assert nothing.stdout.strip() == "hapi: no subscription to remove"
    assert sim.admin("hapi", "subscriptions")["subscriptions"] == []


def test_subscribe_without_a_subscription_block_exits_2(
    invoke: Invoke, tmp_path: Path, sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_SUBSCRIBE_SECRET", "cli-secret")
    invoke("facilities", "apply", "--no-probe", _subscribing_yaml(tmp_path, sim, "hapi", subscription=False))

    result = invoke("subscribe", "hapi")

    assert_one_line_error(result, 2, "no `subscription` block")


def test_subscribe_refused_by_the_ehr_exits_1(invoke: Invoke, tmp_path: Path, sim: Sim) -> None:
    # Epic serves no Subscription resource: the EHR refuses, nothing is recorded.
    path = _subscribing_yaml(tmp_path, sim, "epic")
    path.write_text(path.read_text().replace("    webhook:\n      secret: {env: CLI_SUBSCRIBE_SECRET}\n", ""))
    invoke("facilities", "apply", "--no-probe", path)

    result = invoke("subscribe", "epic")

    assert_one_line_error(result, 1, "epic:")


def test_subscribe_of_an_unknown_facility_exits_2(invoke: Invoke) -> None:
    assert_one_line_error(invoke("subscribe", "nope"), 2, "unknown facility")

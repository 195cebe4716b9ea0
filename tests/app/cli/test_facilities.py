from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from tests.app.cli.conftest import UNMIGRATED_URL, UNREACHABLE_URL, Invoke, assert_one_line_error

FACILITY_YAML = """
facilities:
  - id: {id}
    vendor: generic
    base_url: {base_url}
    auth:
      client_id: cli-client
      private_key: {{file: /run/secrets/cli.pem}}
    webhook:
      header: Authorization
      scheme: Bearer
      secret: {{env: CLI_WEBHOOK_SECRET}}
"""


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "facilities.yaml"
    path.write_text(body)
    return path


def _facility_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(text("SELECT id FROM facilities ORDER BY id")))


def test_apply_creates_then_reports_unchanged(invoke: Invoke, tmp_path: Path, cli_engine: Engine) -> None:
    path = _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="https://ehr.test/fhir"))

    first = invoke("facilities", "apply", "--no-probe", path)
    again = invoke("facilities", "apply", "--no-probe", path)

    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["created 1, updated 0, unchanged 0", "  + fac-a"]
    assert again.stdout.splitlines() == ["created 0, updated 0, unchanged 1"]
    assert _facility_ids(cli_engine) == ["fac-a"]


def test_apply_reports_an_updated_facility(invoke: Invoke, tmp_path: Path) -> None:
    invoke(
        "facilities",
        "apply",
        "--no-probe",
        _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="https://a.test")),
    )

    result = invoke(
        "facilities",
        "apply",
        "--no-probe",
        _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="https://b.test")),
    )

    assert result.stdout.splitlines() == ["created 0, updated 1, unchanged 0", "  ~ fac-a"]


def test_apply_of_broken_yaml_exits_2_and_writes_nothing(
    invoke: Invoke, tmp_path: Path, cli_engine: Engine
) -> None:
    result = invoke("facilities", "apply", _write(tmp_path, "facilities: [\n  - id: x\n  oops: ]"))

    assert_one_line_error(result, 2, "is not valid YAML")
    assert _facility_ids(cli_engine) == []


def test_apply_of_an_invalid_facility_folds_the_validation_report_into_one_line(
    invoke: Invoke, tmp_path: Path
) -> None:
    result = invoke(
        "facilities", "apply", _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="nope"))
    )

    assert_one_line_error(result, 2, "base_url")


def test_apply_of_a_missing_file_exits_2(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("facilities", "apply", tmp_path / "absent.yaml")

    assert_one_line_error(result, 2, "cannot read", "absent.yaml")


def test_list_shows_facilities_and_secret_references_only(invoke: Invoke, tmp_path: Path) -> None:
    invoke(
        "facilities", "apply", _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="https://a.test"))
    )

    result = invoke("facilities", "list")

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "fac-a" in line)
    assert "generic" in row
    assert "cli-client" in row
    assert "yes" in row
    assert "/run/secrets" not in result.stdout


def test_list_without_postgres_exits_3(invoke: Invoke) -> None:
    result = invoke("facilities", "list", database_url=UNREACHABLE_URL)

    assert_one_line_error(result, 3, "cannot connect to Postgres")


def test_list_on_an_unmigrated_database_says_to_upgrade(invoke: Invoke) -> None:
    result = invoke("facilities", "list", database_url=UNMIGRATED_URL)

    assert_one_line_error(result, 2, "ehr-ingest db upgrade")


def test_apply_probes_each_facility_and_records_an_unreachable_one_without_failing(
    invoke: Invoke, tmp_path: Path, cli_engine: Engine
) -> None:
    path = _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="http://127.0.0.1:1/fhir"))

    result = invoke("facilities", "apply", path)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["created 1, updated 0, unchanged 0", "  + fac-a"]
    assert result.stdout.splitlines()[2].startswith("probe fac-a: failed (secret_missing)")
    with cli_engine.connect() as conn:
        row = conn.execute(text("SELECT ok, reason FROM facility_capabilities")).one()
    assert tuple(row) == (False, "secret_missing")


def test_probe_of_an_unknown_facility_exits_2(invoke: Invoke) -> None:
    result = invoke("facilities", "probe", "nope")

    assert_one_line_error(result, 2, "unknown facility 'nope'")


def test_probe_of_an_unreachable_ehr_exits_1_and_show_says_why(invoke: Invoke, tmp_path: Path) -> None:
    invoke(
        "facilities",
        "apply",
        "--no-probe",
        _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="http://127.0.0.1:1/fhir")),
    )

    probed = invoke("facilities", "probe", "fac-a")
    shown = invoke("facilities", "show", "fac-a")

    assert probed.exit_code == 1, probed.output
    assert "probe fac-a: failed" in probed.stdout
    assert shown.exit_code == 0, shown.output
    assert "failed (secret_missing)" in shown.stdout.splitlines()[0]


def test_show_of_a_facility_never_probed_says_how(invoke: Invoke, tmp_path: Path) -> None:
    invoke(
        "facilities",
        "apply",
        "--no-probe",
        _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="https://a.test")),
    )

    result = invoke("facilities", "show", "fac-a")

    assert result.exit_code == 0, result.output
    assert "ehr-ingest facilities probe fac-a" in result.stdout


def test_show_of_an_unknown_facility_exits_2(invoke: Invoke) -> None:
    assert_one_line_error(invoke("facilities", "show", "nope", "--json"), 2, "unknown facility")


def test_show_prints_the_probe_choice_beside_what_runs_and_why(
    invoke: Invoke, tmp_path: Path, cli_engine: Engine
) -> None:
    import json

    invoke(
        "facilities",
        "apply",
        "--no-probe",
        _write(tmp_path, FACILITY_YAML.format(id="fac-a", base_url="https://a.test")),
    )
    caps = {
        "types": {
            "Observation": {"search_params": ["_lastUpdated", "patient"], "required_params": ["patient"]}
        }
    }
    with cli_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO facility_capabilities (facility_id, probed_at, ok, capabilities)"
                " VALUES ('fac-a', now(), true, CAST(:c AS jsonb))"
            ),
            {"c": json.dumps(caps)},
        )

    shown = invoke("facilities", "show", "fac-a")
    document = json.loads(invoke("facilities", "show", "fac-a", "--json").stdout)

    assert shown.exit_code == 0, shown.output
    observation = next(line for line in shown.stdout.splitlines() if "│ Observation" in line)
    assert "patient-last-updated" in observation
    assert "probe" in observation
    assert document["plan"]["Observation"] == {
        "strategy": "patient-last-updated",
        "source": "probe",
        "probed": "patient-last-updated",
        "reason": None,
    }
    assert document["plan"]["Patient"]["source"] == "adapter-default"

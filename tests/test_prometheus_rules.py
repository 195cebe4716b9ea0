"""The Prometheus alerting rules shipped in config/prometheus: one rule per alert kind, with the kind's
default severity, valid for promtool, and firing (and not firing) as its unit tests say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from app.alerts.conditions import DEFAULT_SEVERITY, AlertKind

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "ehr-ingest.rules.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "ehr-ingest.rules.test.yml"


def _promtool() -> str | None:
    """promtool on PATH, or where .ci/run unpacks it from Debian's prometheus package."""
    found = shutil.which("promtool")
    local = ROOT / ".ci" / "tools" / "promtool"
    return found or (str(local) if local.is_file() else None)


def _rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def test_every_alert_kind_has_one_rule_with_its_default_severity() -> None:
    by_kind = {rule["labels"]["kind"]: rule for rule in _rules().values()}
    for kind in get_args(AlertKind):
        rule = by_kind[kind]
        assert f'kind="{kind}"' in rule["expr"]
        assert rule["labels"]["severity"] == DEFAULT_SEVERITY[kind]
        assert rule["annotations"]["runbook"] == f"README.md#{kind}"


def test_every_runbook_named_by_a_rule_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for rule in _rules().values():
        anchor = rule["annotations"]["runbook"].removeprefix("README.md#")
        assert f"#### `{anchor}`" in readme, f"README has no runbook entry for {anchor}"


@pytest.mark.skipif(_promtool() is None, reason="promtool not installed (.ci/run unpacks it)")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    assert promtool is not None
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_the_readme_catalogue_gives_each_kind_its_default_severity() -> None:
    readme = (ROOT / "README.md").read_text()
    for kind in get_args(AlertKind):
        entry = readme.split(f"#### `{kind}`\n", 1)[1]
        assert entry.split(".", 1)[0].lower() == DEFAULT_SEVERITY[kind], kind

"""Sink configuration and routing: the global file, a facility's own sinks, severity thresholds."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy.orm import Session

from app.alerts.sinks import (
    AlertMessage,
    PagerDutySink,
    SinkDirectory,
    facility_alerts,
    load_sinks_file,
    pagerduty_dedup_key,
)
from app.errors import ConfigurationError
from app.facilities.schemas import FacilityAlertsConfig, PagerDutySinkConfig
from app.facilities.service import apply_facilities, list_facilities, load_facilities_file
from tests.app.alerts.fake_sinks import fake_sink

GLOBAL = """
sinks:
  - {name: oncall, type: pagerduty, routing_key: {env: PD_KEY}, min_severity: error}
  - {name: ops, type: slack, webhook_url: {env: SLACK_URL}, min_severity: warning}
  - {name: siem, type: webhook, url: "https://siem.example.org/in", secret: {env: SIEM}, min_severity: info}
"""

FACILITY = """
facilities:
  - id: general
    base_url: https://ehr.example.org/fhir
    auth: {client_id: c1, private_key: {file: /run/secrets/general.pem}}
    alerts:
      global_sinks: true
      sinks:
        - {name: ops, type: slack, webhook_url: {env: GENERAL_SLACK}, min_severity: critical}
        - {name: general-pd, type: pagerduty, routing_key: {env: GENERAL_PD}, min_severity: critical}
"""


def _directory(tmp_path: Path) -> SinkDirectory:
    path = tmp_path / "sinks.yaml"
    path.write_text(GLOBAL)
    return SinkDirectory.load(SimpleNamespace(alert_sinks_file=str(path), alert_status_page_url=None))


def test_global_sinks_take_alerts_from_their_minimum_severity_up(tmp_path: Path) -> None:
    sinks = _directory(tmp_path)
    none = FacilityAlertsConfig()

    assert sinks.route(none, "facility", "critical") == ["oncall", "ops", "siem"]
    assert sinks.route(none, "facility", "error") == ["oncall", "ops", "siem"]
    assert sinks.route(none, "facility", "warning") == ["ops", "siem"]
    assert sinks.route(none, "facility", "info") == ["siem"]


def test_a_facility_sink_shadows_the_global_one_of_its_name_and_adds_its_own(tmp_path: Path) -> None:
    sinks = _directory(tmp_path)
    [cfg] = load_facilities_file(_write(tmp_path, FACILITY)).facilities

    assert sinks.route(cfg.alerts, "facility", "warning") == ["siem"]  # its ops takes critical only
    assert sinks.route(cfg.alerts, "facility", "critical") == ["general-pd", "oncall", "ops", "siem"]
    only_own = cfg.alerts.model_copy(update={"global_sinks": False})
    assert sinks.route(only_own, "facility", "critical") == ["general-pd", "ops"]


def test_a_sink_failing_alert_never_goes_to_the_failing_sink(tmp_path: Path) -> None:
    assert _directory(tmp_path).route(FacilityAlertsConfig(), "sink:siem", "warning") == ["ops"]


def test_a_facilitys_alerts_block_is_stored_and_read_back(db: Session, tmp_path: Path) -> None:
    apply_facilities(db, load_facilities_file(_write(tmp_path, FACILITY)))

    [facility] = list_facilities(db)

    assert [s.name for s in facility_alerts(facility.alerts).sinks] == ["ops", "general-pd"]


def _write(tmp_path: Path, text: str, name: str = "facilities.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "bad",
    [
        GLOBAL + "  - {name: ops, type: slack, webhook_url: {env: X}}\n",  # duplicate name
        GLOBAL.replace("type: slack", "type: teams"),  # unknown type
        GLOBAL.replace("min_severity: error", "min_severity: urgent"),  # unknown severity
        GLOBAL.replace("routing_key: {env: PD_KEY}", "routing_key: plain-key-in-the-file"),  # not a reference
        "sinks: [",
    ],
)
def test_invalid_sinks_files_are_refused_with_a_configuration_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError):
        load_sinks_file(_write(tmp_path, bad, "sinks.yaml"))


def test_a_missing_sinks_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        load_sinks_file(tmp_path / "absent.yaml")


def test_the_example_sinks_file_is_valid() -> None:
    example = Path(__file__).resolve().parents[3] / "config" / "alert-sinks.example.yaml"

    assert [s.type for s in load_sinks_file(example).sinks] == ["pagerduty", "slack", "webhook"]


def test_a_dedup_key_longer_than_pagerduty_takes_becomes_a_stable_digest() -> None:
    short, long_ = (
        "ehri:fac:facility:feed_quiet:1",
        "ehri:fac:" + "subscription:" + "x" * 300 + ":feed_quiet:1",
    )

    assert pagerduty_dedup_key(short) == short
    assert pagerduty_dedup_key(long_) == pagerduty_dedup_key(long_)
    assert len(pagerduty_dedup_key(long_)) <= 255
    assert pagerduty_dedup_key(long_) != pagerduty_dedup_key(long_.replace(":1", ":2"))


def test_a_sink_sends_details_read_back_from_jsonb_as_decimals_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The product's engine decodes jsonb numbers with a fraction as Decimal (app.fhir.jsonwire): the
    alert's details (a rate, a window in seconds) are sent as the same numbers, not refused."""
    monkeypatch.setenv("EHRI_TEST_PD_KEY", "pd-routing-key-0123456789abcdef")
    with fake_sink("pagerduty") as pagerduty, httpx.Client() as http:
        config = PagerDutySinkConfig(
            name="oncall", type="pagerduty", routing_key={"env": "EHRI_TEST_PD_KEY"}, url=pagerduty.url
        )
        message = AlertMessage(
            message_id="ehri-delivery-1",
            action="trigger",
            alert_id=1,
            dedup_key="ehri:fac-1:facility:feed_leaking",
            facility_id="fac-1",
            source="facility",
            kind="feed_leaking",
            severity="error",
            state="open",
            summary="leaking",
            opened_at=datetime(2026, 12, 3, tzinfo=UTC),
            details={"recovered": 7, "window_s": Decimal("3600.0"), "rate": Decimal("0.125")},
        )
        PagerDutySink(config).send(http, message, datetime.now(UTC))
        sent = pagerduty.accepted()[0].json()["payload"]["custom_details"]["details"]
    assert sent == {"recovered": 7, "window_s": 3600.0, "rate": 0.125}

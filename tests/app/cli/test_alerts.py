from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.alerts.conditions import Condition
from app.alerts.service import AlertPolicy, observe
from app.db.models import AlertDelivery
from tests.app.alerts.conftest import T0, condition, route_to
from tests.app.alerts.fake_sinks import FakeSink, fake_sink
from tests.app.cli.conftest import Invoke, assert_one_line_error, registered_facility


def _open(engine: Engine, facility: str, *sources: str) -> list[int]:
    with Session(engine) as session:
        result = observe(
            session,
            [condition(facility, source=s, recovered=2) for s in sources],
            set(),
            T0,
            policy=AlertPolicy(),
            router=route_to("pd"),  # type: ignore[arg-type]
        )
        session.commit()
    return result.opened


@pytest.fixture
def facility(cli_engine: Engine) -> str:
    return registered_facility(cli_engine, "fac-a")


def _row(stdout: str, alert_id: int) -> str:
    return next(line for line in stdout.splitlines() if line.strip("│ ").startswith(f"{alert_id} "))


def test_list_shows_alerts_and_open_filters_the_resolved_out(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    quiet, leaking = _open(cli_engine, facility, "facility", "subscription:s1")
    assert invoke("alerts", "resolve", str(leaking), "--by", "alice").exit_code == 0

    everything = invoke("alerts", "list")
    live = invoke("alerts", "list", "--open", "--facility", facility)

    assert everything.exit_code == 0, everything.output
    assert "resolved" in _row(everything.stdout, leaking)
    assert "feed_quiet" in _row(everything.stdout, quiet)
    assert str(leaking) not in [line.strip("│ ").split(" ")[0] for line in live.stdout.splitlines()]
    assert live.stdout.splitlines()[-1] == "1 alerts, 1 open or acknowledged"


def test_list_as_json_carries_the_dedup_key_and_state(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    [alert_id] = _open(cli_engine, facility, "facility")

    result = invoke("alerts", "list", "--json")

    [document] = json.loads(result.stdout)["alerts"]
    assert document["id"] == alert_id
    assert document["dedup_key"] == f"ehri:{facility}:facility:feed_quiet:{alert_id}"
    assert (document["state"], document["details"]) == ("open", {"recovered": 2})


def test_list_as_json_writes_fractional_details_read_back_from_jsonb(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    """The CLI's engine decodes jsonb numbers with a fraction as Decimal: they are written as numbers."""
    with Session(cli_engine) as session:
        rate = Condition(
            facility, "facility", "error_rate", "failures", details={"rate": 0.375, "window_s": 900.0}
        )
        observe(session, [rate], set(), T0, policy=AlertPolicy(), router=route_to("pd"))  # type: ignore[arg-type]
        session.commit()

    result = invoke("alerts", "list", "--json")

    assert result.exit_code == 0, result.output
    [document] = json.loads(result.stdout)["alerts"]
    assert document["details"] == {"rate": 0.375, "window_s": 900.0}


def test_ack_acknowledges_once_and_queues_the_acknowledge(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    [alert_id] = _open(cli_engine, facility, "facility")

    first = invoke("alerts", "ack", str(alert_id), "--by", "alice")
    again = invoke("alerts", "ack", str(alert_id), "--by", "bob")

    assert first.exit_code == 0, first.output
    assert (
        first.stdout.strip()
        == f"alert {alert_id}: acknowledged by alice; the sinks that got its trigger are told"
    )
    assert again.stdout.strip() == f"alert {alert_id}: already acknowledged or resolved"
    with Session(cli_engine) as session:
        actions = session.scalars(
            select(AlertDelivery.action).where(AlertDelivery.alert_id == alert_id).order_by(AlertDelivery.id)
        ).all()
    assert actions == ["trigger", "acknowledge"]


def test_ack_of_an_unknown_alert_exits_2(invoke: Invoke, facility: str) -> None:
    assert_one_line_error(invoke("alerts", "ack", "999999"), 2, "no alert 999999")


def test_list_of_an_unknown_facility_exits_2(invoke: Invoke, facility: str) -> None:
    assert_one_line_error(invoke("alerts", "list", "--facility", "nope"), 2, "unknown facility 'nope'")


@pytest.fixture
def pagerduty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSink]:
    with fake_sink("pagerduty") as sink:
        sinks_file = tmp_path / "sinks.yaml"
        sinks_file.write_text(
            "sinks:\n"
            "  - name: pd\n"
            "    type: pagerduty\n"
            "    routing_key: {env: EHRI_TEST_PD_KEY}\n"
            f"    url: '{sink.url}/v2/enqueue'\n"
        )
        monkeypatch.setenv("EHRI_ALERT_SINKS_FILE", str(sinks_file))
        monkeypatch.setenv("EHRI_TEST_PD_KEY", "pd-key")
        yield sink


def test_test_sink_sends_a_marked_test_event_that_resolves_at_once(
    invoke: Invoke, pagerduty: FakeSink
) -> None:
    result = invoke("alerts", "test-sink", "pd")

    assert result.exit_code == 0, result.output
    trigger, resolved = (r.json() for r in pagerduty.received)
    assert (trigger["event_action"], resolved["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolved["dedup_key"]
    assert trigger["payload"]["summary"].startswith("TEST")
    assert trigger["payload"]["severity"] == "info"
    assert trigger["payload"]["custom_details"]["test"] is True


def test_test_sink_refused_exits_1_with_the_reason(invoke: Invoke, pagerduty: FakeSink) -> None:
    pagerduty.fail(1, 400)

    assert_one_line_error(
        invoke("alerts", "test-sink", "pd"), 1, "sink pd refused the test event: sink_rejected"
    )


def test_test_sink_of_an_unknown_sink_names_the_known_ones(invoke: Invoke, pagerduty: FakeSink) -> None:
    assert_one_line_error(invoke("alerts", "test-sink", "slack"), 2, "unknown sink 'slack'", "known: pd")


def test_show_prints_the_history_and_the_deliveries(
    invoke: Invoke, cli_engine: Engine, facility: str
) -> None:
    [alert_id] = _open(cli_engine, facility, "facility")
    invoke("alerts", "ack", str(alert_id), "--by", "alice")

    result = invoke("alerts", "show", str(alert_id))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"alert {alert_id} acknowledged: feed_quiet at {facility} (facility, critical)"
        f" dedup key ehri:{facility}:facility:feed_quiet:{alert_id}"
    )
    assert any("acknowledged" in line and "alice" in line for line in lines)
    assert any("pd" in line and "acknowledge " in line and "pending" in line for line in lines)

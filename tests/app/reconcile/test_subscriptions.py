"""The Subscription we ask for, per style, with our authentication (pure), and renewal before ``end``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.errors import ConfigInvalid
from app.facilities.schemas import SubscriptionConfig, WebhookConfig
from app.reconcile.subscriptions import HEARTBEAT_EXT, PAYLOAD_EXT, SECRET_EXT, desired_subscription

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TOPIC = "http://example.org/topics/all"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUB_SECRET", "the-secret")


def _webhook(method: str = "shared-secret") -> WebhookConfig:
    return WebhookConfig.model_validate({"method": method, "secret": {"env": "SUB_SECRET"}})


def test_backport_id_only_with_heartbeat_end_and_our_header() -> None:
    config = SubscriptionConfig(
        style="backport-r4", endpoint="https://in.test/hooks/f", topic=TOPIC, heartbeat_s=60, lifetime_days=10
    )

    resource = desired_subscription(config, _webhook(), now=NOW)

    assert resource["status"] == "requested"
    assert resource["criteria"] == TOPIC
    assert resource["end"] == "2026-12-12T12:00:00Z"
    channel = resource["channel"]
    assert channel["header"] == ["Authorization: Bearer the-secret"]
    assert channel["_payload"]["extension"] == [{"url": PAYLOAD_EXT, "valueCode": "id-only"}]
    assert channel["extension"] == [{"url": HEARTBEAT_EXT, "valueUnsignedInt": 60}]


def test_criteria_subscriptions_carry_the_signing_secret() -> None:
    config = SubscriptionConfig(style="criteria", endpoint="https://in.test/hooks/f", criteria="Observation")

    resource = desired_subscription(config, _webhook("x-signature"), now=NOW)

    assert resource["criteria"] == "Observation"
    assert resource["status"] == "active"
    assert resource["extension"] == [{"url": SECRET_EXT, "valueString": "the-secret"}]
    assert "header" not in resource["channel"]


def test_r5_subscriptions_name_their_topic_and_content() -> None:
    config = SubscriptionConfig(
        style="r5", endpoint="https://in.test/hooks/f", topic=TOPIC, criteria="Observation"
    )

    resource = desired_subscription(config, _webhook(), now=NOW)

    assert (resource["topic"], resource["content"], resource["heartbeatPeriod"]) == (TOPIC, "id-only", 60)
    assert resource["parameter"] == [{"name": "Authorization", "value": "Bearer the-secret"}]
    assert resource["filterBy"] == [{"filterParameter": "_type", "value": "Observation"}]


def test_a_webhook_method_an_ehr_cannot_be_asked_for_is_a_configuration_error() -> None:
    config = SubscriptionConfig(style="backport-r4", endpoint="https://in.test/hooks/f", topic=TOPIC)

    with pytest.raises(ConfigInvalid, match="standard-webhooks"):
        desired_subscription(config, _webhook("standard-webhooks"), now=NOW)


def test_a_topic_style_without_a_topic_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError, match="needs `topic`"):
        SubscriptionConfig.model_validate({"style": "r4b", "endpoint": "https://in.test/hooks/f"})


def test_a_renewal_window_as_long_as_the_lifetime_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError, match="renew_before_days"):
        SubscriptionConfig.model_validate(
            {
                "style": "criteria",
                "criteria": "Observation",
                "endpoint": "https://in.test/h",
                "lifetime_days": 3,
            }
        )

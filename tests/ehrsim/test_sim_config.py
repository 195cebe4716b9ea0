from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import pytest

from ehrsim.config import SimConfig, load_config
from ehrsim.instants import date_range, format_instant

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa


def test_yaml_config_resolves_key_files_next_to_it(tmp_path: Path, private_key: rsa.RSAPrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "public.pem").write_bytes(pem)
    (tmp_path / "sim.yaml").write_text(
        """
facilities:
  - id: general
    profile: generic
    seed: 3
    clients:
      - client_id: ingest
        public_key_file: public.pem
        scopes: ["system/*.read"]
    webhook:
      url: http://127.0.0.1:8000/hooks/general
      headers: {Authorization: "Bearer s3cret"}
      subscription_id: sub-general
      max_attempts: 5
"""
    )
    config = load_config(tmp_path / "sim.yaml")
    facility = config.facilities[0]
    assert facility.clients[0].public_key_bytes() == pem
    assert facility.webhook is not None
    assert facility.webhook.max_attempts == 5
    assert facility.patients == 5


@pytest.mark.parametrize(
    "facilities",
    [
        [{"id": "a", "profile": "nonesuch"}],
        [{"id": "a"}, {"id": "a"}],
        [{"id": "_admin"}],
        [{"id": "a", "clients": [{"client_id": "c"}]}],
    ],
)
def test_invalid_configs_are_rejected(facilities: list[dict[str, Any]]) -> None:
    with pytest.raises(pydantic.ValidationError):
        SimConfig.model_validate({"facilities": facilities})


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2026-11-24", "2026-11-24T00:00:00.000Z", "2026-11-25T00:00:00.000Z"),
        ("2026-12", "2026-12-01T00:00:00.000Z", "2027-01-01T00:00:00.000Z"),
        ("2026-11-24T19:30:00Z", "2026-11-24T19:30:00.000Z", "2026-11-24T19:30:01.000Z"),
        ("2026-11-24T19:30:00.123Z", "2026-11-24T19:30:00.123Z", "2026-11-24T19:30:00.124Z"),
        ("2026-11-24T20:30:00.5+01:00", "2026-11-24T19:30:00.500Z", "2026-11-24T19:30:00.600Z"),
        ("2026-11-24T20:30:00.000 01:00", "2026-11-24T19:30:00.000Z", "2026-11-24T19:30:00.001Z"),
    ],
)
def test_search_dates_cover_their_precision(value: str, start: str, end: str) -> None:
    lo, hi = date_range(value)
    assert (format_instant(lo), format_instant(hi)) == (start, end)


@pytest.mark.parametrize("value", ["2026-13", "2026-02-30", "2026-11-24T25:00:00Z", "yesterday"])
def test_bad_search_dates_are_rejected(value: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        date_range(value)


def test_yaml_config_takes_profile_faults_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "sim.yaml").write_text(
        """
facilities:
  - id: north
    profile: athena
    time_scale: 0.01
    profile_overrides: {token_requests_per_min: 5, payloads: [id-only]}
    clients:
      - client_id: backend
        client_secret: s3cret
      - client_id: keyed
        jwks_url: https://keys.example/jwks.json
    webhook:
      url: http://127.0.0.1:8000/hooks/north
      secret: hush
      heartbeat_s: 30
    faults:
      drop_rate: 0.25
      throttle: {requests: 3, retry_after_s: 9, http_date: true}
"""
    )
    facility = load_config(tmp_path / "sim.yaml").facilities[0]
    assert facility.time_scale == 0.01
    assert facility.faults.drop_rate == 0.25
    assert facility.faults.throttle.http_date is True
    assert facility.webhook is not None
    assert facility.webhook.secret == "hush"
    assert facility.profile_overrides["token_requests_per_min"] == 5


@pytest.mark.parametrize(
    "facility",
    [
        {"id": "a", "profile_overrides": {"nonesuch": 1}},
        {"id": "a", "faults": {"drop_rate": 1.5}},
        {"id": "a", "faults": {"error_burst": {"requests": 1, "status": 404}}},
        {"id": "a", "clients": [{"client_id": "c", "scopes": []}]},
        {"id": "a", "webhook": {"url": "http://x", "style": "carrier-pigeon"}},
    ],
)
def test_invalid_profile_fault_and_client_settings_are_rejected(facility: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        SimConfig.model_validate({"facilities": [facility]})

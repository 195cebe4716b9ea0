"""The facility YAML's ``feed_health:`` block: documented defaults, stored as given, read back."""

from __future__ import annotations

import re
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy.orm import Session

from app.errors import ConfigurationError
from app.facilities import schemas
from app.facilities.schemas import FeedHealthConfig
from app.facilities.service import apply_facilities, list_facilities, load_facilities_file
from app.feeds.service import facility_config

YAML = """
facilities:
  - id: clinic
    base_url: https://ehr.example.org/fhir
    auth:
      client_id: c1
      private_key: {file: /run/secrets/clinic.pem}
    feed_health:
      detection_latency: PT30M
      timezone: Europe/Berlin
      business_hours: {days: [1, 2, 3, 4, 5, 6], start: 8, end: 18}
      expected_per_hour: 40
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "facilities.yaml"
    path.write_text(text)
    return path


def test_the_block_is_stored_as_given_and_read_back_with_the_defaults(db: Session, tmp_path: Path) -> None:
    apply_facilities(db, load_facilities_file(_write(tmp_path, YAML)))
    [facility] = list_facilities(db)

    assert set(facility.feed_health) == {
        "detection_latency",
        "timezone",
        "business_hours",
        "expected_per_hour",
    }
    config = facility_config(facility)
    assert config.detection_latency == timedelta(minutes=30)
    assert config.business_hours.days == [1, 2, 3, 4, 5, 6]
    assert config.heartbeat_slack == FeedHealthConfig().heartbeat_slack


def test_a_facility_without_the_block_gets_the_documented_defaults(db: Session, tmp_path: Path) -> None:
    apply_facilities(
        db, load_facilities_file(_write(tmp_path, YAML.split("    feed_health:", maxsplit=1)[0]))
    )
    [facility] = list_facilities(db)

    assert facility.feed_health == {}
    assert facility_config(facility) == FeedHealthConfig()


def test_the_documented_example_is_the_defaults_but_for_the_time_zone() -> None:
    doc = schemas.__doc__ or ""
    block = re.search(r"\n    feed_health:.*?\n((?:      .*\n)+)", doc)
    assert block is not None
    example = FeedHealthConfig.model_validate(yaml.safe_load(textwrap.dedent(block.group(1))))

    assert example.model_dump(exclude={"timezone"}) == FeedHealthConfig().model_dump(exclude={"timezone"})


@pytest.mark.parametrize(
    "bad",
    [
        "      timezone: Mars/Olympus_Mons\n",
        "      business_hours: {days: [0], start: 8, end: 18}\n",
        "      business_hours: {start: 18, end: 8}\n",
        "      quiet_ratio: 0\n",
        "      unknown_knob: 1\n",
    ],
)
def test_invalid_thresholds_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError):
        load_facilities_file(_write(tmp_path, YAML + bad))

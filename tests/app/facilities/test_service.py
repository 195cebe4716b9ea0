from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.errors import ConfigurationError
from app.facilities.service import apply_facilities, list_facilities, load_facilities_file

YAML = """
facilities:
  - id: general
    vendor: epic
    base_url: https://ehr.example.org/fhir/
    auth:
      client_id: c1
      private_key: {file: /run/secrets/general.pem}
      algorithm: ES384
    webhook:
      secret: {env: GENERAL_WEBHOOK_SECRET}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "facilities.yaml"
    path.write_text(text)
    return path


def test_apply_is_idempotent_and_reports_changes(db: Session, tmp_path: Path) -> None:
    parsed = load_facilities_file(_write(tmp_path, YAML))
    first = apply_facilities(db, parsed)
    second = apply_facilities(db, parsed)
    changed = apply_facilities(db, load_facilities_file(_write(tmp_path, YAML.replace("epic", "oracle"))))
    assert (first.created, second.unchanged, changed.updated) == (["general"], ["general"], ["general"])
    [facility] = list_facilities(db)
    assert facility.vendor == "oracle"
    assert facility.base_url == "https://ehr.example.org/fhir"


def test_only_secret_references_reach_the_database(db: Session, tmp_path: Path) -> None:
    apply_facilities(db, load_facilities_file(_write(tmp_path, YAML)))
    [facility] = list_facilities(db)
    assert facility.auth["private_key"] == {"file": "/run/secrets/general.pem", "env": None}
    assert facility.webhook["secret"] == {"file": None, "env": "GENERAL_WEBHOOK_SECRET"}


@pytest.mark.parametrize(
    "bad",
    [
        YAML.replace("{file: /run/secrets/general.pem}", "{file: a, env: B}"),  # two references
        YAML.replace("vendor: epic", "vendor: nextgen"),  # unknown vendor
        YAML + YAML.split("facilities:")[1],  # duplicate id
        "facilities: [",  # not YAML
    ],
)
def test_invalid_files_are_refused_with_a_configuration_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError):
        load_facilities_file(_write(tmp_path, bad))

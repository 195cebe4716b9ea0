"""Use cases on facilities. Services flush; the caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.db.models import Facility
from app.errors import ConfigInvalid, ConfigUnreadable
from app.facilities.schemas import FacilitiesFile, FacilityConfig

M = TypeVar("M", bound=BaseModel)


def load_yaml_file(path: Path, model: type[M]) -> M:
    """``path`` read as YAML and validated as ``model`` (an empty file is ``{}``). Raises ConfigUnreadable
    or ConfigInvalid, naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigUnreadable(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigInvalid(f"{path} is not valid YAML: {exc}") from exc
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ConfigInvalid(f"{path}: {exc}") from exc


def load_facilities_file(path: Path) -> FacilitiesFile:
    return load_yaml_file(path, FacilitiesFile)


@dataclass(frozen=True)
class ApplyResult:
    created: list[str]
    updated: list[str]
    unchanged: list[str]


def _row_values(cfg: FacilityConfig) -> dict[str, Any]:
    return {
        "id": cfg.id,
        "vendor": cfg.vendor,
        "base_url": str(cfg.base_url).rstrip("/"),
        "auth": cfg.auth.model_dump(mode="json"),
        "webhook": cfg.webhook.model_dump(mode="json") if cfg.webhook else {},
        "limits": cfg.limits.model_dump(mode="json"),
        "mrn_system": cfg.mrn_system,
        "hl7v2": cfg.hl7v2.model_dump(mode="json") if cfg.hl7v2 else {},
        "enabled": cfg.enabled,
        "change_detection": dict(cfg.change_detection),
        "subscription": cfg.subscription.model_dump(mode="json") if cfg.subscription else {},
        "reconcile": cfg.reconcile.model_dump(mode="json", exclude_defaults=True),
        "alerts": cfg.alerts.model_dump(mode="json", exclude_defaults=True),
        "feed_health": cfg.feed_health.model_dump(mode="json", exclude_defaults=True),
    }


def apply_facilities(session: Session, file: FacilitiesFile) -> ApplyResult:
    """Create or update every facility in ``file``; idempotent. Facilities absent from the file are kept."""
    existing = {f.id: f for f in session.scalars(select(Facility)).all()}
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for cfg in file.facilities:
        values = _row_values(cfg)
        current = existing.get(cfg.id)
        if current is None:
            created.append(cfg.id)
        elif all(getattr(current, k) == v for k, v in values.items()):
            unchanged.append(cfg.id)
            continue
        else:
            updated.append(cfg.id)
        stmt = insert(Facility).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Facility.id],
            set_={**{k: stmt.excluded[k] for k in values if k != "id"}, "updated_at": func.now()},
        )
        session.execute(stmt)
    session.flush()
    return ApplyResult(created=created, updated=updated, unchanged=unchanged)


def list_facilities(session: Session) -> list[Facility]:
    return list(session.scalars(select(Facility).order_by(Facility.id)).all())


def get_facility(session: Session, facility_id: str) -> Facility | None:
    return session.get(Facility, facility_id)

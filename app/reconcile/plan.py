"""Which strategy reconciles which type of a facility, from data only: the facility's YAML
(``reconcile:``) over its vendor adapter's defaults. (The probed capabilities join here at merge.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.db.models import Facility
from app.errors import ConfigInvalid
from app.facilities.schemas import ReconcileConfig
from app.reconcile import StrategyName
from app.reconcile.strategies import STRATEGIES
from app.vendors.base import VendorAdapter

DEFAULT_OVERLAP = timedelta(minutes=1)


@dataclass(frozen=True)
class TypePlan:
    resource_type: str
    strategy: StrategyName


@dataclass(frozen=True)
class FacilityPlan:
    facility_id: str
    types: tuple[TypePlan, ...]
    interval: timedelta
    overlap: timedelta
    recrawl_interval: timedelta
    initial_since: datetime | None


def reconcile_config(facility: Facility) -> ReconcileConfig:
    return ReconcileConfig.model_validate(facility.reconcile or {})


def plan_for(
    facility: Facility,
    adapter: VendorAdapter,
    *,
    types: list[str] | None = None,
    strategy: StrategyName | None = None,
) -> FacilityPlan:
    """The facility's plan; ``types`` and ``strategy`` narrow or override it (the backfill CLI).
    Raises ``ConfigInvalid`` for a strategy this reconciler cannot run."""
    config = reconcile_config(facility)
    chosen = types or config.types or list(adapter.reconcile_types)
    plans = []
    for resource_type in chosen:
        name = strategy or config.strategy.get(resource_type) or adapter.default_change_detection
        if name not in STRATEGIES:
            raise ConfigInvalid(f"{facility.id}: strategy {name} for {resource_type} is not available")
        plans.append(TypePlan(resource_type, name))
    overlap = max(
        config.overlap if config.overlap is not None else DEFAULT_OVERLAP, adapter.search_facts.min_overlap
    )
    return FacilityPlan(
        facility.id,
        tuple(plans),
        config.interval,
        overlap,
        config.recrawl_interval,
        config.initial_since,
    )

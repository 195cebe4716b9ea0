"""One module per change-detection strategy behind ``base.Strategy``; ``STRATEGIES`` maps the names the
YAML, the CLI and the metrics use to them. Strategies the reconciler cannot run yet are absent."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from app.reconcile import StrategyName
from app.reconcile.strategies.base import Strategy
from app.reconcile.strategies.bulk_since import BulkSince
from app.reconcile.strategies.created_date import CreatedDate
from app.reconcile.strategies.last_updated import LastUpdated
from app.reconcile.strategies.patient_last_updated import PatientLastUpdated

STRATEGIES: Mapping[StrategyName, Strategy] = MappingProxyType(
    {s.name: s for s in (LastUpdated(), PatientLastUpdated(), CreatedDate(), BulkSince())}
)

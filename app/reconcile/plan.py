"""Which strategy reconciles which type of a facility, from data only. Per type, the first of:

1. the facilities YAML override, ``reconcile.strategy`` (per type, or ``"*"`` for every type; the
   deprecated top-level ``change_detection:`` is read as an alias, ``reconcile.strategy`` winning): what
   the operator names must run, so one this reconciler cannot run is a ``ConfigInvalid``;
2. the choice the last successful probe's capabilities allow (``app.reconcile.capabilities``, without the
   override: the YAML is read here, as it is now). A choice this reconciler does not implement yet
   falls back (``TypePlan.reason``, which the run logs) to the first
   implemented strategy the capabilities allow (``PREFERENCE`` order), else to the adapter default;
3. the vendor adapter's ``default_change_detection`` (never probed, the type not advertised, or the probe
   allowed nothing for it: said in ``TypePlan.reason``).

Each ``TypePlan`` says where its strategy came from (``source``) and what the probe alone chose
(``probed``), for ``facilities show``: the one rule, told where it is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, cast

from app.db.models import Facility
from app.errors import ConfigInvalid
from app.facilities.schemas import ReconcileConfig
from app.reconcile import StrategyName
from app.reconcile.capabilities import (
    PREFERENCE,
    Capabilities,
    StrategyChoice,
    TypeCapabilities,
    allowed,
    explain_strategies,
)
from app.reconcile.strategies import STRATEGIES
from app.vendors.base import VendorAdapter

DEFAULT_OVERLAP = timedelta(minutes=1)

#: Where a type's strategy came from.
PlanSource = Literal["override", "probe", "probe-fallback", "adapter-default"]


@dataclass(frozen=True)
class TypePlan:
    resource_type: str
    strategy: StrategyName
    source: PlanSource = "adapter-default"
    #: Why the probe's choice was not run (``probe-fallback``; ``adapter-default`` when the probe allowed
    #: nothing for the type).
    reason: str | None = None
    #: What the last successful probe's capabilities alone choose (no override, no fallback); None when
    #: never probed, the type not seen, or nothing allowed.
    probed: StrategyName | None = None
    #: Whether the last successful probe found type-level ``_history`` (``history-type``) on the type:
    #: ``last-updated`` then finds deletions in it too (False: never probed, or not advertised).
    history: bool = False


@dataclass(frozen=True)
class FacilityPlan:
    facility_id: str
    types: tuple[TypePlan, ...]
    interval: timedelta
    overlap: timedelta
    recrawl_interval: timedelta
    initial_since: datetime | None
    #: The Group the YAML names as the facility's cohort (``bulk-since`` exports it).
    export_group: str | None = None


def reconcile_config(facility: Facility) -> ReconcileConfig:
    return ReconcileConfig.model_validate(facility.reconcile or {})


def strategy_overrides(facility: Facility) -> dict[str, StrategyName]:
    """The facility's YAML overrides ({type or "*": strategy}): ``reconcile.strategy`` over what a row
    applied before the alias was folded in still holds in its legacy ``change_detection`` column."""
    legacy = cast(dict[str, StrategyName], dict(facility.change_detection or {}))
    return {**legacy, **reconcile_config(facility).strategy}


def _choose(
    resource_type: str,
    adapter: VendorAdapter,
    overrides: Mapping[str, StrategyName],
    probed: Mapping[str, StrategyChoice],
    capabilities: Capabilities | None,
) -> TypePlan:
    raw = probed.get(resource_type)
    choice = raw.strategy if raw is not None else None
    override = overrides.get(resource_type, overrides.get("*"))
    if override is not None:
        return TypePlan(resource_type, override, "override", probed=choice)
    default = adapter.default_change_detection
    if choice is None or capabilities is None:
        reason = None
        if raw is not None and capabilities is not None:
            reason = f"probe allowed nothing ({raw.reason}); {adapter.vendor} default {default} instead"
        return TypePlan(resource_type, default, "adapter-default", reason)
    if choice in STRATEGIES:
        return TypePlan(resource_type, choice, "probe", probed=choice)
    caps = capabilities.types.get(resource_type, TypeCapabilities())
    options = allowed(caps, capabilities, resource_type)
    fallback = next((s for s in PREFERENCE if s in options and s in STRATEGIES), default)
    reason = f"probed choice {choice} not implemented yet; {fallback} instead"
    return TypePlan(resource_type, fallback, "probe-fallback", reason, probed=choice)


def plan_for(
    facility: Facility,
    adapter: VendorAdapter,
    *,
    types: list[str] | None = None,
    strategy: StrategyName | None = None,
    capabilities: Capabilities | None = None,
) -> FacilityPlan:
    """The facility's plan; ``types`` and ``strategy`` narrow or override it (the backfill CLI);
    ``capabilities``: what the last successful probe found (None: never probed). Raises ``ConfigInvalid``
    for a strategy this reconciler cannot run."""
    config = reconcile_config(facility)
    chosen = types or config.types or list(adapter.reconcile_types)
    overrides: Mapping[str, StrategyName] = (
        {"*": strategy} if strategy is not None else strategy_overrides(facility)
    )
    probed = explain_strategies(capabilities, adapter) if capabilities is not None else {}
    plans = []
    for resource_type in chosen:
        plan = _choose(resource_type, adapter, overrides, probed, capabilities)
        if plan.strategy not in STRATEGIES:
            raise ConfigInvalid(
                f"{facility.id}: strategy {plan.strategy} for {resource_type} is not available"
            )
        if capabilities is not None and resource_type in capabilities.types:
            plan = replace(plan, history=capabilities.types[resource_type].history)
        plans.append(plan)
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
        config.group,
    )

"""What a facility's EHR can do for change detection, and the strategy chosen per resource type.

Pure: no I/O, no clock. ``parse_capabilities`` reads a CapabilityStatement and a SMART configuration (as
fetched by ``app.reconcile.probe``) into ``Capabilities``; ``choose_strategies`` picks one
``StrategyName`` per resource type and ``explain_strategies`` says why:

1. the facilities YAML override (``reconcile.strategy``: per type, or ``"*"`` for every type), even where
   the capabilities do not advertise what it needs (the reason says so: the operator may know better);
2. else the vendor adapter's ``default_change_detection`` when the capabilities allow it;
3. else the best the capabilities allow, in the order of ``PREFERENCE``;
4. else none: the type is listed with the reason, and reconciled by nothing (``facilities show`` says so).

``events`` is never chosen from capabilities: it recovers a known gap of a subscription, it does not find
changes on its own; only an override can name it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from app.reconcile import StrategyName
from app.vendors.base import VendorAdapter

#: The search parameters that matter for change detection, as recorded (``_lastupdated`` is Epic's spelling
#: and is recorded as ``_lastUpdated``).
LAST_UPDATED = "_lastUpdated"
CREATED_DATE_PARAMS = ("issued", "date", "authoredon", "recorded-date", "onset-date")
RECORDED_PARAMS = frozenset({LAST_UPDATED, "patient", "_sort", *CREATED_DATE_PARAMS})

#: When the adapter's default is not allowed, the first of these the capabilities allow.
PREFERENCE: tuple[StrategyName, ...] = ("last-updated", "patient-last-updated", "created-date", "bulk-since")

ExportLevel = Literal["system", "patient", "group"]
ChoiceSource = Literal["override", "adapter-default", "capabilities", "none"]

#: Types listed in a CapabilityStatement that hold no clinical data to reconcile.
_INFRASTRUCTURE_TYPES = frozenset(
    {"Subscription", "SubscriptionTopic", "Group", "OperationDefinition", "CapabilityStatement", "Binary"}
)
_REQUIRED_MARKERS = ("required",)


@dataclass(frozen=True)
class TypeCapabilities:
    """One resource type: the recorded search parameters it supports, and ``_history`` on it."""

    search_params: frozenset[str] = frozenset()
    #: Recorded parameters the server requires in every search of this type (athena, Oracle, Epic: patient).
    required_params: frozenset[str] = frozenset()
    history: bool = False
    #: The server's own spelling of a recorded parameter where it differs (Epic: ``_lastUpdated`` →
    #: ``_lastupdated``; ``patient`` → ``subject``): names are case-sensitive, queries must use these.
    spellings: Mapping[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str:
        """The name to send for the recorded parameter ``name``."""
        return self.spellings.get(name, name)

    @property
    def last_updated(self) -> bool:
        return LAST_UPDATED in self.search_params

    @property
    def created_date_params(self) -> tuple[str, ...]:
        return tuple(p for p in CREATED_DATE_PARAMS if p in self.search_params)


@dataclass(frozen=True)
class Capabilities:
    """What one probe found. ``smart`` is whether a SMART configuration with a token endpoint was served."""

    types: Mapping[str, TypeCapabilities] = field(default_factory=dict)
    export: frozenset[ExportLevel] = frozenset()
    history_system: bool = False
    subscription: bool = False
    subscription_status: bool = False
    subscription_events: bool = False
    smart: bool = False
    token_endpoint: str | None = None
    software: str | None = None
    fhir_version: str | None = None

    def keys(self) -> frozenset[str]:
        """Every capability as a stable key (``Observation:_lastUpdated``, ``system:$export/group``,
        ``Subscription:$events``...): what a later probe compares to find what is gone."""
        found: set[str] = set()
        for rtype, caps in self.types.items():
            found.add(f"{rtype}:search")
            found.update(f"{rtype}:{p}" for p in caps.search_params)
            if caps.history:
                found.add(f"{rtype}:_history")
        found.update(f"system:$export/{level}" for level in self.export)
        flags = {
            "system:_history": self.history_system,
            "Subscription:create": self.subscription,
            "Subscription:$status": self.subscription_status,
            "Subscription:$events": self.subscription_events,
            "smart:token_endpoint": self.smart,
        }
        found.update(k for k, v in flags.items() if v)
        return frozenset(found)

    def to_json(self) -> dict[str, Any]:
        return {
            "types": {
                t: {
                    "search_params": sorted(c.search_params),
                    "required_params": sorted(c.required_params),
                    "history": c.history,
                    "spellings": dict(sorted(c.spellings.items())),
                }
                for t, c in sorted(self.types.items())
            },
            "export": sorted(self.export),
            "history_system": self.history_system,
            "subscription": self.subscription,
            "subscription_status": self.subscription_status,
            "subscription_events": self.subscription_events,
            "smart": self.smart,
            "token_endpoint": self.token_endpoint,
            "software": self.software,
            "fhir_version": self.fhir_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Capabilities:
        types = {
            t: TypeCapabilities(
                search_params=frozenset(c.get("search_params", ())),
                required_params=frozenset(c.get("required_params", ())),
                history=bool(c.get("history")),
                spellings=dict(c.get("spellings") or {}),
            )
            for t, c in dict(data.get("types") or {}).items()
        }
        levels = {lvl for lvl in data.get("export", ()) if lvl in get_args(ExportLevel)}
        return cls(
            types=types,
            export=cast(frozenset[ExportLevel], frozenset(levels)),
            history_system=bool(data.get("history_system")),
            subscription=bool(data.get("subscription")),
            subscription_status=bool(data.get("subscription_status")),
            subscription_events=bool(data.get("subscription_events")),
            smart=bool(data.get("smart")),
            token_endpoint=data.get("token_endpoint"),
            software=data.get("software"),
            fhir_version=data.get("fhir_version"),
        )


# -- parsing ----------------------------------------------------------------------------------------


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _operation_names(element: Mapping[str, Any]) -> set[str]:
    """Operation names of a CapabilityStatement element, ``$`` stripped, lower-case; also the last segment
    of each ``definition`` (servers name them differently: ``export``, ``$export``, ``group-export``)."""
    names: set[str] = set()
    for op in _dicts(element.get("operation")):
        name = op.get("name")
        if isinstance(name, str):
            names.add(name.lstrip("$").lower())
        definition = op.get("definition")
        if isinstance(definition, str):
            names.add(definition.rstrip("/").rsplit("/", 1)[-1].lower())
    return names


def _interactions(element: Mapping[str, Any]) -> set[str]:
    return {i["code"] for i in _dicts(element.get("interaction")) if isinstance(i.get("code"), str)}


def _is_required(param: Mapping[str, Any]) -> bool:
    for ext in _dicts(param.get("extension")):
        url = str(ext.get("url", "")).lower()
        if any(m in url for m in _REQUIRED_MARKERS) and ext.get("valueBoolean") is True:
            return True
    return False


def _recorded_name(name: str) -> str | None:
    if name.lower() == LAST_UPDATED.lower():
        return LAST_UPDATED
    if name in ("subject", "patient"):
        return "patient"
    return name if name in RECORDED_PARAMS else None


def _type_capabilities(resource: Mapping[str, Any]) -> TypeCapabilities:
    params: set[str] = set()
    required: set[str] = set()
    spellings: dict[str, str] = {}
    for param in _dicts(resource.get("searchParam")):
        advertised = str(param.get("name", ""))
        name = _recorded_name(advertised)
        if name is None:
            continue
        if name not in params and advertised != name:
            spellings[name] = advertised
        elif advertised == name:
            spellings.pop(name, None)  # the standard spelling wins where both are listed
        params.add(name)
        if _is_required(param):
            required.add(name)
    interactions = _interactions(resource)
    return TypeCapabilities(
        search_params=frozenset(params),
        required_params=frozenset(required),
        history="history-type" in interactions,
        spellings=spellings,
    )


def parse_capabilities(
    statement: Mapping[str, Any], smart_configuration: Mapping[str, Any] | None
) -> Capabilities:
    """Capabilities from a CapabilityStatement and a SMART configuration (None: none was served).

    Lenient: a malformed element is skipped, never raised on; only ``rest`` entries in ``server`` mode
    count. Searchable types are those with a ``search-type`` interaction."""
    types: dict[str, TypeCapabilities] = {}
    export: set[ExportLevel] = set()
    history_system = subscription = status = events = False
    for rest in _dicts(statement.get("rest")):
        if rest.get("mode", "server") != "server":
            continue
        system_ops = _operation_names(rest)
        if system_ops & {"export"}:
            export.add("system")
        history_system |= "history-system" in _interactions(rest)
        for resource in _dicts(rest.get("resource")):
            rtype = resource.get("type")
            if not isinstance(rtype, str):
                continue
            ops = _operation_names(resource)
            interactions = _interactions(resource)
            if rtype == "Subscription":
                subscription = "create" in interactions
                status |= bool(ops & {"status", "backport-subscription-status"})
                events |= bool(ops & {"events", "backport-subscription-events"})
            if rtype == "Patient" and ops & {"export", "patient-export"}:
                export.add("patient")
            if rtype == "Group" and ops & {"export", "group-export"}:
                export.add("group")
            if rtype not in _INFRASTRUCTURE_TYPES and "search-type" in interactions:
                types[rtype] = _type_capabilities(resource)
    software = statement.get("software")
    token_endpoint = (smart_configuration or {}).get("token_endpoint")
    return Capabilities(
        types=types,
        export=frozenset(export),
        history_system=history_system,
        subscription=subscription,
        subscription_status=status,
        subscription_events=events,
        smart=isinstance(token_endpoint, str) and bool(token_endpoint),
        token_endpoint=token_endpoint if isinstance(token_endpoint, str) else None,
        software=str(software.get("name")) if isinstance(software, dict) and software.get("name") else None,
        fhir_version=str(statement["fhirVersion"]) if statement.get("fhirVersion") else None,
    )


# -- choosing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyChoice:
    strategy: StrategyName | None
    source: ChoiceSource
    reason: str


def allowed(caps: TypeCapabilities, capabilities: Capabilities, resource_type: str) -> dict[str, str]:
    """The strategies the capabilities allow for one type (by name), each with why, and the reason each
    other strategy is not allowed (under ``"!name"``)."""
    answer: dict[str, str] = {}
    patient_scoped = resource_type == "Patient" or "patient" in caps.search_params
    if caps.last_updated and "patient" not in caps.required_params:
        answer["last-updated"] = "_lastUpdated searchable system-wide"
    elif caps.last_updated:
        answer["!last-updated"] = "_lastUpdated only together with patient"
    else:
        answer["!last-updated"] = "no _lastUpdated"
    if caps.last_updated and patient_scoped:
        answer["patient-last-updated"] = "_lastUpdated searchable per patient"
    else:
        answer["!patient-last-updated"] = (
            "no _lastUpdated" if not caps.last_updated else "no patient parameter"
        )
    dates = caps.created_date_params
    if dates and patient_scoped:
        answer["created-date"] = f"created-date parameter {', '.join(dates)} per patient, with re-crawl"
    elif resource_type == "Patient":
        answer["created-date"] = "the cohort re-crawl reads each patient"
    else:
        answer["!created-date"] = "no created-date parameter per patient"
    if capabilities.export:
        answer["bulk-since"] = f"$export at {'/'.join(sorted(capabilities.export))} level"
    else:
        answer["!bulk-since"] = "no $export"
    return answer


def explain_strategies(
    capabilities: Capabilities, adapter: VendorAdapter, overrides: Mapping[str, StrategyName] | None = None
) -> dict[str, StrategyChoice]:
    """One choice per searchable resource type of ``capabilities`` (and per overridden type), with why."""
    overrides = overrides or {}
    default = adapter.default_change_detection
    choices: dict[str, StrategyChoice] = {}
    named = [t for t in overrides if t != "*" and t not in capabilities.types]
    for rtype in sorted([*capabilities.types, *named]):
        caps = capabilities.types.get(rtype, TypeCapabilities())
        options = allowed(caps, capabilities, rtype)
        override = overrides.get(rtype, overrides.get("*"))
        if override is not None:
            note = options.get(override) or options.get(f"!{override}") or "not advertised"
            verdict = "allowed" if override in options else "not allowed by the capabilities"
            choices[rtype] = StrategyChoice(override, "override", f"YAML override ({verdict}: {note})")
        elif default in options:
            choices[rtype] = StrategyChoice(
                default, "adapter-default", f"{adapter.vendor} default: {options[default]}"
            )
        else:
            best = next((s for s in PREFERENCE if s in options), None)
            missing = options.get(f"!{default}", "not applicable")
            if best is None:
                why = "; ".join(options[f"!{s}"] for s in PREFERENCE if f"!{s}" in options)
                choices[rtype] = StrategyChoice(None, "none", f"nothing allowed: {why}")
            else:
                choices[rtype] = StrategyChoice(
                    best,
                    "capabilities",
                    f"{adapter.vendor} default {default} not allowed ({missing}); {options[best]}",
                )
    return choices


def choose_strategies(
    capabilities: Capabilities, adapter: VendorAdapter, overrides: Mapping[str, StrategyName] | None = None
) -> dict[str, StrategyName]:
    """One strategy per resource type (types with none allowed are left out; ``explain_strategies`` lists
    them with the reason)."""
    return {
        t: c.strategy
        for t, c in explain_strategies(capabilities, adapter, overrides).items()
        if c.strategy is not None
    }


def gone(previous: Iterable[str], current: Iterable[str]) -> list[str]:
    """The capability keys in ``previous`` that ``current`` no longer has, sorted."""
    return sorted(set(previous) - set(current))

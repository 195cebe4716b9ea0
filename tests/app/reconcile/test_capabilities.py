"""choose_strategies: the YAML override, else the vendor's default where allowed, else the best allowed."""

from __future__ import annotations

from typing import Any

from app.reconcile.capabilities import (
    Capabilities,
    TypeCapabilities,
    choose_strategies,
    explain_strategies,
    parse_capabilities,
)
from app.vendors.registry import adapter_for


def _statement(resources: list[dict[str, Any]], operations: tuple[str, ...] = ()) -> dict[str, Any]:
    rest: dict[str, Any] = {"mode": "server", "resource": resources}
    if operations:
        rest["operation"] = [{"name": name} for name in operations]
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [rest]}


def _type(rtype: str, *params: str, required: tuple[str, ...] = (), history: bool = False) -> dict[str, Any]:
    interactions = [{"code": "read"}, {"code": "search-type"}] + (
        [{"code": "history-type"}] if history else []
    )
    search = []
    for name in params:
        param: dict[str, Any] = {"name": name, "type": "date"}
        if name in required:
            param["extension"] = [{"url": "http://x.example/search-parameter-required", "valueBoolean": True}]
        search.append(param)
    return {"type": rtype, "interaction": interactions, "searchParam": search}


def test_parse_records_the_parameters_that_matter_and_epics_spelling() -> None:
    caps = parse_capabilities(
        _statement(
            [
                _type("Observation", "_lastupdated", "patient", "issued", "code", required=("patient",)),
                _type("Condition", "subject", "recorded-date", history=True),
            ],
            operations=("export",),
        ),
        {"token_endpoint": "https://ehr.test/token"},
    )

    assert caps.types["Observation"].search_params == {"_lastUpdated", "patient", "issued"}
    assert caps.types["Observation"].param("_lastUpdated") == "_lastupdated"  # what a query must send
    assert caps.types["Condition"].param("patient") == "subject"
    assert caps.types["Observation"].param("patient") == "patient"
    assert caps.types["Observation"].required_params == {"patient"}
    assert caps.types["Condition"].search_params == {"patient", "recorded-date"}
    assert caps.types["Condition"].history
    assert caps.export == {"system"}
    assert caps.smart


def test_parse_tolerates_a_malformed_statement() -> None:
    caps = parse_capabilities(
        {"resourceType": "CapabilityStatement", "rest": [{"resource": [None, 3]}]}, None
    )

    assert caps.types == {}
    assert not caps.smart


def test_parse_finds_subscription_operations_and_export_levels() -> None:
    statement = _statement(
        [
            {
                "type": "Subscription",
                "interaction": [{"code": "create"}],
                "operation": [{"name": "$status", "definition": "x"}, {"name": "events"}],
            },
            {"type": "Patient", "interaction": [], "operation": [{"name": "export"}]},
            {"type": "Group", "interaction": [], "operation": [{"name": "group-export"}]},
        ]
    )

    caps = parse_capabilities(statement, None)

    assert caps.subscription
    assert caps.subscription_status
    assert caps.subscription_events
    assert caps.export == {"patient", "group"}
    assert "Subscription" not in caps.types


def _caps(export: bool = False, **types: TypeCapabilities) -> Capabilities:
    return Capabilities(types=types, export=frozenset({"group"}) if export else frozenset())


def test_the_adapter_default_wins_where_the_capabilities_allow_it() -> None:
    caps = _caps(Observation=TypeCapabilities(frozenset({"_lastUpdated", "patient"}), frozenset({"patient"})))

    assert choose_strategies(caps, adapter_for("oracle"), {}) == {"Observation": "patient-last-updated"}
    # The generic default (system-wide _lastUpdated) is not allowed where patient is required.
    assert choose_strategies(caps, adapter_for("generic"), {}) == {"Observation": "patient-last-updated"}


def test_the_best_allowed_follows_the_preference_order() -> None:
    caps = _caps(
        export=True,
        Observation=TypeCapabilities(frozenset({"patient", "issued"})),
        Medication=TypeCapabilities(frozenset()),
    )

    chosen = explain_strategies(caps, adapter_for("oracle"), {})

    assert chosen["Observation"].strategy == "created-date"
    assert chosen["Observation"].source == "capabilities"
    assert "patient-last-updated not allowed" in chosen["Observation"].reason
    assert chosen["Medication"].strategy == "bulk-since"


def test_a_yaml_override_wins_and_says_when_the_capabilities_do_not_allow_it() -> None:
    caps = _caps(Observation=TypeCapabilities(frozenset({"_lastUpdated"})), Condition=TypeCapabilities())

    chosen = explain_strategies(
        caps, adapter_for("generic"), {"Observation": "bulk-since", "*": "created-date"}
    )

    assert chosen["Observation"].strategy == "bulk-since"
    assert chosen["Observation"].source == "override"
    assert "not allowed by the capabilities" in chosen["Observation"].reason
    assert chosen["Condition"].strategy == "created-date"


def test_a_type_nothing_allows_is_explained_and_left_out_of_the_choice() -> None:
    caps = _caps(Medication=TypeCapabilities())

    explained = explain_strategies(caps, adapter_for("epic"), {})

    assert explained["Medication"].strategy is None
    assert "no $export" in explained["Medication"].reason
    assert choose_strategies(caps, adapter_for("epic"), {}) == {}


def test_capability_keys_round_trip_through_json() -> None:
    caps = parse_capabilities(
        _statement([_type("Observation", "_lastUpdated", history=True)], operations=("export",)),
        {"token_endpoint": "https://ehr.test/token"},
    )

    again = Capabilities.from_json(caps.to_json())

    assert again == caps
    assert {"Observation:_lastUpdated", "Observation:_history", "system:$export/system"} <= caps.keys()

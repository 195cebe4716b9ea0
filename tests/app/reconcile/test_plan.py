"""plan_for: per type, the YAML override (``reconcile.strategy``, its deprecated alias
``change_detection``) > what the last successful probe's capabilities chose > the vendor adapter's
default; a probed choice the engine cannot run yet falls back, saying why."""

from __future__ import annotations

from typing import Any

import pytest

from app.db.models import Facility
from app.errors import ConfigInvalid
from app.facilities.schemas import FacilityConfig
from app.reconcile.capabilities import Capabilities, TypeCapabilities
from app.reconcile.plan import plan_for
from app.reconcile.strategies import STRATEGIES
from app.vendors.registry import adapter_for

# Observation searchable by _lastUpdated only together with a patient: the probe picks
# patient-last-updated where the generic adapter's default is last-updated.
PER_PATIENT = Capabilities(
    types={
        "Observation": TypeCapabilities(
            search_params=frozenset({"_lastUpdated", "patient"}), required_params=frozenset({"patient"})
        ),
        "Patient": TypeCapabilities(search_params=frozenset({"_lastUpdated"})),
    }
)


def _facility(vendor: str = "generic", **reconcile: Any) -> Facility:
    return Facility(id="f1", vendor=vendor, reconcile={"types": ["Patient", "Observation"], **reconcile})


def _chosen(facility: Facility, capabilities: Capabilities | None = None) -> dict[str, tuple[str, str]]:
    plan = plan_for(facility, adapter_for(facility.vendor), capabilities=capabilities)
    return {t.resource_type: (t.strategy, t.source) for t in plan.types}


def test_never_probed_runs_the_adapter_default() -> None:
    assert _chosen(_facility()) == {
        "Patient": ("last-updated", "adapter-default"),
        "Observation": ("last-updated", "adapter-default"),
    }


def test_the_probed_choice_beats_the_adapter_default() -> None:
    assert _chosen(_facility(), PER_PATIENT)["Observation"] == ("patient-last-updated", "probe")


def test_a_type_the_probe_did_not_see_runs_the_adapter_default() -> None:
    facility = _facility(types=["Condition"])
    assert _chosen(facility, PER_PATIENT) == {"Condition": ("last-updated", "adapter-default")}


def test_the_yaml_override_beats_the_probed_choice() -> None:
    facility = _facility(strategy={"Observation": "created-date"})
    assert _chosen(facility, PER_PATIENT)["Observation"] == ("created-date", "override")
    every = _facility(strategy={"*": "created-date", "Patient": "last-updated"})
    assert _chosen(every, PER_PATIENT) == {
        "Patient": ("last-updated", "override"),
        "Observation": ("created-date", "override"),
    }


def test_the_deprecated_change_detection_key_is_the_same_override_and_reconcile_strategy_wins() -> None:
    config = FacilityConfig.model_validate(
        {
            "id": "f1",
            "base_url": "http://ehr.example/fhir",
            "auth": {"client_id": "c", "private_key": {"env": "K"}},
            "change_detection": {"Observation": "created-date", "Patient": "created-date"},
            "reconcile": {"types": ["Patient", "Observation"], "strategy": {"Patient": "last-updated"}},
        }
    )
    assert config.change_detection == {}
    facility = Facility(id="f1", vendor="generic", reconcile=config.reconcile.model_dump(mode="json"))
    assert _chosen(facility, PER_PATIENT) == {
        "Patient": ("last-updated", "override"),
        "Observation": ("created-date", "override"),
    }
    # a row applied before the alias was folded in still holds it in its own column
    legacy = Facility(id="f1", vendor="generic", reconcile={"types": ["Observation"]})
    legacy.change_detection = {"Observation": "created-date"}
    assert _chosen(legacy, PER_PATIENT) == {"Observation": ("created-date", "override")}


def test_an_override_the_engine_cannot_run_is_a_configuration_error() -> None:
    with pytest.raises(ConfigInvalid):
        _chosen(_facility(strategy={"Observation": "events"}), PER_PATIENT)


@pytest.fixture
def without_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that cannot run ``bulk-since``: the only strategy a probe can choose that an engine
    might lack (``events`` is never chosen from capabilities)."""
    runnable = {k: v for k, v in STRATEGIES.items() if k != "bulk-since"}
    monkeypatch.setattr("app.reconcile.plan.STRATEGIES", runnable)


def test_meditech_runs_bulk_since_where_the_probe_found_export() -> None:
    exporting = Capabilities(types=PER_PATIENT.types, export=frozenset({"group"}))
    plan = plan_for(_facility("meditech"), adapter_for("meditech"), capabilities=exporting)
    assert {t.resource_type: (t.strategy, t.source) for t in plan.types} == {
        "Patient": ("bulk-since", "probe"),
        "Observation": ("bulk-since", "probe"),
    }
    assert _chosen(_facility("meditech")) == {
        "Patient": ("bulk-since", "adapter-default"),
        "Observation": ("bulk-since", "adapter-default"),
    }


def test_the_yaml_group_is_what_bulk_since_exports() -> None:
    plan = plan_for(_facility("meditech", group="g-7"), adapter_for("meditech"))
    assert plan.export_group == "g-7"
    assert plan_for(_facility("meditech"), adapter_for("meditech")).export_group is None


@pytest.mark.usefixtures("without_bulk")
def test_a_probed_choice_not_implemented_falls_back_to_what_the_capabilities_allow_with_a_reason() -> None:
    exporting = Capabilities(types=PER_PATIENT.types, export=frozenset({"group"}))
    # MEDITECH's default is bulk-since, which the capabilities allow: that is the probed choice
    plan = plan_for(_facility("meditech"), adapter_for("meditech"), capabilities=exporting)
    observation = next(t for t in plan.types if t.resource_type == "Observation")
    assert (observation.strategy, observation.source) == ("patient-last-updated", "probe-fallback")
    assert observation.reason is not None
    assert "bulk-since" in observation.reason


@pytest.mark.usefixtures("without_bulk")
def test_a_probed_choice_not_implemented_with_nothing_runnable_allowed() -> None:
    only_export = Capabilities(
        types={"Observation": TypeCapabilities(), "Patient": TypeCapabilities()}, export=frozenset({"system"})
    )
    facility = _facility(types=["Observation"])
    # the generic adapter's default is not allowed: the probe chose bulk-since; the default is run
    assert _chosen(facility, only_export) == {"Observation": ("last-updated", "probe-fallback")}
    with pytest.raises(ConfigInvalid):  # MEDITECH: nothing this engine can run
        _chosen(_facility("meditech", types=["Observation"]), only_export)


def _provenance(facility: Facility, capabilities: Capabilities | None) -> dict[str, tuple[Any, ...]]:
    plan = plan_for(facility, adapter_for(facility.vendor), capabilities=capabilities)
    return {t.resource_type: (t.probed, t.strategy, t.source) for t in plan.types}


@pytest.mark.usefixtures("without_bulk")
def test_each_type_plan_carries_the_raw_probed_choice_beside_what_runs() -> None:
    # never probed: no raw choice
    assert _provenance(_facility(), None)["Observation"] == (None, "last-updated", "adapter-default")
    # probed and run
    assert _provenance(_facility(), PER_PATIENT)["Observation"] == (
        "patient-last-updated",
        "patient-last-updated",
        "probe",
    )
    # overridden: the probe's own choice is still told
    overridden = _facility(strategy={"Observation": "created-date"})
    assert _provenance(overridden, PER_PATIENT)["Observation"] == (
        "patient-last-updated",
        "created-date",
        "override",
    )
    # not runnable yet: the raw choice is the one not run
    exporting = Capabilities(types=PER_PATIENT.types, export=frozenset({"group"}))
    assert _provenance(_facility("meditech"), exporting)["Observation"] == (
        "bulk-since",
        "patient-last-updated",
        "probe-fallback",
    )


def test_a_probe_that_allowed_nothing_for_a_type_says_so_beside_the_adapter_default() -> None:
    nothing = Capabilities(types={"Observation": TypeCapabilities()})
    plan = plan_for(_facility(types=["Observation"]), adapter_for("generic"), capabilities=nothing)
    (observation,) = plan.types
    assert (observation.probed, observation.strategy, observation.source) == (
        None,
        "last-updated",
        "adapter-default",
    )
    assert observation.reason is not None
    assert observation.reason.startswith("probe allowed nothing")

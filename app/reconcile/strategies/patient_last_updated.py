"""``patient-last-updated``: ``{type}?patient={id}&_lastUpdated=gt{watermark - overlap}`` per patient of
the cohort (Oracle, athena: ``_lastUpdated`` only together with ``patient``; athena's day precision is
in the query's format and the adapter's minimum overlap of a day)."""

from __future__ import annotations

from collections.abc import Iterator

from app.reconcile import StrategyName
from app.reconcile.strategies.base import Page, Scope, last_updated_value
from app.reconcile.strategies.per_patient import per_patient, whole_type


class PatientLastUpdated:
    name: StrategyName = "patient-last-updated"

    def pages(self, scope: Scope) -> Iterator[Page]:
        if scope.resource_type in scope.facts.unscoped_types:
            yield from whole_type(scope)
            return
        changes = None
        if scope.since is not None:
            changes = {scope.facts.last_updated_param: last_updated_value(scope.facts, scope.since)}
        yield from per_patient(scope, changes)

"""``created-date``: per patient, the type's admin date parameter (``issued``, ``recorded-date``,
``authoredon``, ``date``…) from the watermark minus overlap, for EHRs with no ``_lastUpdated`` and no
``meta`` (Epic); edits and deletions are found by the periodic cohort re-crawl, which compares content."""

from __future__ import annotations

from collections.abc import Iterator

from app.reconcile import StrategyName
from app.reconcile.strategies.base import Page, Scope, date_value
from app.reconcile.strategies.per_patient import per_patient, whole_type


class CreatedDate:
    name: StrategyName = "created-date"

    def pages(self, scope: Scope) -> Iterator[Page]:
        if scope.resource_type in scope.facts.unscoped_types:
            yield from whole_type(scope)
            return
        param = scope.facts.created_date_params.get(scope.resource_type)
        changes = None
        if scope.since is not None and param is not None:
            changes = {param: date_value(scope.since)}
        yield from per_patient(scope, changes)

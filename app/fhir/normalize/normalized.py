"""One resource in, one ``Normalized`` out: the stored resource, its view summary, validation issues and
the resources still to fetch. Pure: no I/O, no clock (``now`` is passed in), no database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.fhir.normalize.identifiers import trim_identifiers
from app.fhir.normalize.summaries import SummaryOptions, medication_reference, summarize
from app.fhir.normalize.validation import validation_issues


@dataclass(frozen=True)
class Normalized:
    """``resource``: the input with identifier values trimmed and nothing else changed (date precision,
    unknown elements and invalid content kept): what the summary and the validation read. The pipeline
    stores the EHR's body as sent (``Observed.resource``), so content hashes and re-crawl comparisons see
    what the EHR sent, and the trimmed values are the summary's (the views'). ``summary``: the view fields
    of its type.
    ``issues``: ``"path: error_type"`` strings, never values. ``references``: (type, id) of resources to
    fetch to complete this one; contained ``#id`` references are resolved inline and not listed."""

    resource: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)
    references: list[tuple[str, str]] = field(default_factory=list)


def references_to_fetch(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """The separate resources this one needs. Today: the Medication behind a ``medicationReference``
    (Epic), which bulk export does not include."""
    found = medication_reference(resource)
    return [found] if found is not None else []


def normalize_resource(
    resource: dict[str, Any], *, now: datetime, options: SummaryOptions | None = None
) -> Normalized:
    """Normalize one resource. Never raises on content: whatever is wrong with it becomes an issue."""
    cleaned = trim_identifiers(resource)
    if not isinstance(cleaned, dict):  # the signature promises a dict; JSON from the wire may disagree
        return Normalized(resource={}, issues=["<root>: not_an_object"])
    return Normalized(
        resource=cleaned,
        summary=summarize(cleaned, now, options or SummaryOptions()),
        issues=validation_issues(cleaned, now),
        references=references_to_fetch(cleaned),
    )

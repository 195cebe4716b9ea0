"""What a vendor's search API allows the reconciler to ask (EHR-FACTS §6), as data the vendor adapters
carry (``VendorAdapter.search_facts``): strategies read these fields, never the vendor's name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

#: The admin date of each type: when the record was made, which a created-date search filters on.
CREATED_DATE_PARAMS: Mapping[str, str] = MappingProxyType(
    {
        "Observation": "issued",
        "Condition": "recorded-date",
        "MedicationRequest": "authoredon",
        "AllergyIntolerance": "date",
        "DocumentReference": "date",
        "Encounter": "date",
    }
)

#: The types the reconciler polls when a facility's YAML names none.
DEFAULT_TYPES: tuple[str, ...] = ("Patient", "Observation", "Condition")


@dataclass(frozen=True)
class SearchFacts:
    #: ``_lastUpdated`` as the server spells it (search parameter names are case-sensitive).
    last_updated_param: str = "_lastUpdated"
    #: ``_lastUpdated`` values finer than a day are refused: the query sends dates only.
    last_updated_day_precision: bool = False
    #: How many ``_lastUpdated`` values one search may carry (None: no limit).
    last_updated_max_values: int | None = None
    #: Whether ``_lastUpdated`` may be combined with a ``date``-like parameter.
    last_updated_with_dates: bool = True
    #: Whether ``_sort=_lastUpdated`` is accepted.
    sort_last_updated: bool = True
    #: The least overlap that is safe (day precision needs a day).
    min_overlap: timedelta = timedelta(0)
    #: Types that have no patient to scope a search by: per-patient strategies crawl them whole.
    unscoped_types: frozenset[str] = frozenset({"Patient", "Medication", "Group", "Practitioner"})
    #: The created-date parameter per type (a type missing here has none: only the re-crawl sees it).
    created_date_params: Mapping[str, str] = field(default_factory=lambda: CREATED_DATE_PARAMS)
    #: Whether Patients can be listed by a search without criteria. Epic's Patient search needs criteria
    #: and refuses one matching more than 100 (4127): there, Patients are searched by birth-date ranges
    #: narrowed until each is accepted, and known patients no range listed are read by id.
    patients_listable: bool = True
    #: Page size asked for (``_count``).
    page_size: int = 100

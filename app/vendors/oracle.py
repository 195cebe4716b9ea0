"""Oracle Health / Cerner Millennium (EHR-FACTS §6-7).

- Whether ``_id=a,b,c`` is accepted is unverified: off by default (``batch_read=True`` per facility once
  checked), since a refused search costs a round trip and an error on every batch.
- Blood pressure as a panel only when Millennium paired the readings, else split systolic/diastolic
  Observations; ``use=usual`` names with a given name only; ``medicationCodeableConcept`` with RxNorm plus
  a tenant synonym, or a contained ``#id`` Medication: all handled by the default adapter.
- Millennium answers 500 for some permanent errors (§5): a 500 whose OperationOutcome names only
  non-transient issue codes (``not-supported``, ``invalid``…) is permanent; any other 500 is transient.
"""

from __future__ import annotations

from app.reconcile import StrategyName
from app.reconcile.facts import SearchFacts
from app.vendors.base import DefaultAdapter


class OracleAdapter(DefaultAdapter):
    vendor = "oracle"
    default_change_detection: StrategyName = "patient-last-updated"  # _lastUpdated only per patient
    # At most two ``_lastUpdated`` values, never with ``date``; only clinically significant edits move it
    # (the re-crawl finds the rest).
    search_facts = SearchFacts(last_updated_max_values=2, last_updated_with_dates=False)
    batch_read = False
    server_error_outcome_is_final = True

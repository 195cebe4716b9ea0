"""Epic (EHR-FACTS §6-7).

- Clinical searches take exactly one ``patient`` (errors 4111/4112) and multi-id reads are not
  documented: one resource per read.
- Identifier values padded with spaces, ``official`` and ``usual`` names with identical content,
  ``search.mode=outcome`` entries (4119, 4101), ``medicationReference`` to a separate Medication: handled
  by the default adapter for every vendor, since the same rules are harmless where the quirk is absent.
- MRN systems are per-customer OIDs: configure ``mrn_system`` per facility.
- Paging sessions expire (OperationOutcome code 4113 on a ``next`` link): the query is issued again.
"""

from __future__ import annotations

from app.reconcile import StrategyName
from app.reconcile.facts import SearchFacts
from app.vendors.base import DefaultAdapter


class EpicAdapter(DefaultAdapter):
    vendor = "epic"
    default_change_detection: StrategyName = (
        "created-date"  # no _lastUpdated and no meta: admin dates per patient plus a cohort re-crawl
    )
    # ``_lastupdated`` (so spelled) exists on DocumentReference alone; Patient searches cap at 100 (4127).
    search_facts = SearchFacts(
        last_updated_param="_lastupdated", sort_last_updated=False, patients_listable=False
    )
    batch_read = False
    batch_max = 1
    paging_expired_codes = frozenset({"4113"})

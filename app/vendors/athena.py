"""athenahealth (EHR-FACTS §1, §6-7).

- Whether ``_id=a,b,c`` is accepted is unverified: off by default (``batch_read=True`` per facility once
  checked).
- Preferred names as ``nickname``; ids such as ``a-1.E-123``: handled by the default adapter.
- Event numbers restart at 1 in every notification bundle (EHR-FACTS §1): useless for identity and gap
  detection, so events are told apart by ``notificationEvent.id``.
"""

from __future__ import annotations

from datetime import timedelta

from app.fhir.notifications import EventIdentity, NotificationShape
from app.reconcile import StrategyName
from app.reconcile.facts import SearchFacts
from app.vendors.base import DefaultAdapter


class AthenaAdapter(DefaultAdapter):
    vendor = "athena"
    default_change_detection: StrategyName = "patient-last-updated"  # per patient, day precision
    # ``_lastUpdated`` per patient at day precision: a query re-reads at least the previous day.
    search_facts = SearchFacts(last_updated_day_precision=True, min_overlap=timedelta(days=1))
    batch_read = False
    event_identity: EventIdentity = "event-id"
    # Topic subscriptions (R5-backport style): notification Bundles, never a bare resource.
    notification_shapes: frozenset[NotificationShape] = frozenset({"r4b", "r5", "backport"})

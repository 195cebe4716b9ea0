"""MEDITECH Expanse (EHR-FACTS §6).

Whether ``_id=a,b,c`` is accepted is unverified: off by default (``batch_read=True`` per facility once
checked). Its bulk export (``Group/$export``) is how changes are found; no data-shape quirk is known.
"""

from __future__ import annotations

from app.reconcile import StrategyName
from app.vendors.base import DefaultAdapter


class MeditechAdapter(DefaultAdapter):
    vendor = "meditech"
    default_change_detection: StrategyName = (
        "bulk-since"  # searches are per patient; Group $export with _since
    )
    batch_read = False

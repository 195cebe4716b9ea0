"""Referenced resources (the Medication a ``medicationReference`` points to) already fetched, per facility.

One cache per process, owned by the runtime that builds the pipeline (the worker's ``Runtime``), so that
tests and processes never share one by accident."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from app.fhir.references import ResourceRef


class ReferenceCache:
    """A bounded LRU. A miss costs one read; a stale hit is harmless because a changed Medication is
    announced (or reconciled) like any other resource."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[str, ResourceRef], None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def unseen(self, facility_id: str, refs: Iterable[ResourceRef]) -> list[ResourceRef]:
        with self._lock:
            return [ref for ref in dict.fromkeys(refs) if (facility_id, ref) not in self._seen]

    def remember(self, facility_id: str, refs: Iterable[ResourceRef]) -> None:
        """Call once the resources are committed: a rolled-back fetch must be fetched again."""
        with self._lock:
            for ref in refs:
                self._seen[(facility_id, ref)] = None
                self._seen.move_to_end((facility_id, ref))
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)

"""What a facility's clients sent: the arrival time of every FHIR and token request, and the fault status
it was answered with (``/_admin/{facility}/requests``). Tests measure politeness from it (request rate,
Retry-After pauses, token requests) where it matters: at the EHR.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_RECORDED = 100_000  # per kind; the oldest are forgotten


@dataclass
class Traffic:
    fhir: deque[tuple[float, int | None]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED))
    token: deque[tuple[float, int | None]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED))

    def record(self, kind: str, fault_status: int | None) -> None:
        """A request arrived (wall clock, as the clients' politeness reckons); ``fault_status`` is the
        status an injected fault answered it with, None when it was served normally."""
        getattr(self, kind).append((time.time(), fault_status))

    def as_dict(self) -> dict[str, Any]:
        return {
            kind: [{"at": at, "fault": status} for at, status in getattr(self, kind)]
            for kind in ("fhir", "token")
        }

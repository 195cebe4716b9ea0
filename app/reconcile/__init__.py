"""The reconciler's kernel: how each facility's changes are found when no notification said so.

One change-detection strategy per facility and resource type (DESIGN.md, "Change detection"), chosen by
data (the vendor adapter's default, the facility's probed capabilities, the facilities YAML), never by
``if vendor == …``. Everything found goes through the one write path (``app.ingest.pipeline``).
"""

from __future__ import annotations

from typing import Literal

#: The change-detection strategies, by the names the facilities YAML, the CLI and the metrics use.
StrategyName = Literal["last-updated", "patient-last-updated", "created-date", "bulk-since", "events"]

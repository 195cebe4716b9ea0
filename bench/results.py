"""``bench/results.json``: a list of {name, value, unit, baseline, ratio, target}, printed as a table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return round(self.value / self.baseline, 3)


def write(figures: list[Figure]) -> None:
    """Merge ``figures`` into results.json (replacing same-named ones) and print the whole table."""
    existing: dict[str, dict[str, object]] = {}
    if RESULTS.exists():
        existing = {row["name"]: row for row in json.loads(RESULTS.read_text())}
    for figure in figures:
        existing[figure.name] = {**asdict(figure), "ratio": figure.ratio}
    rows = sorted(existing.values(), key=lambda r: str(r["name"]))
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    table = Table("name", "value", "unit", "baseline", "ratio", "target", "note", title="bench/results.json")
    for r in rows:
        table.add_row(
            *(
                ("" if r.get(k) is None else str(r.get(k)))
                for k in ("name", "value", "unit", "baseline", "ratio", "target", "note")
            )
        )
    Console(width=160).print(table)

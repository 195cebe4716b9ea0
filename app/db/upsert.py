"""One row inserted or, when its key exists, overwritten with the given values (Postgres
``INSERT … ON CONFLICT (key) DO UPDATE``): the bookkeeping tables keep one row per facility."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.dialects.postgresql import Insert, insert


def upsert(model: Any, values: Mapping[str, Any], *, key: str = "facility_id") -> Insert:
    """The statement that stores ``values`` as the row of ``model`` whose ``key`` is ``values[key]``:
    every other given column is overwritten, columns not given keep what they hold."""
    stmt = insert(model).values(**values)
    return stmt.on_conflict_do_update(
        index_elements=[key], set_={k: stmt.excluded[k] for k in values if k != key}
    )

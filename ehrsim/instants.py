"""FHIR instants as integer milliseconds since the epoch (UTC): formatting and search-value ranges."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]
"""Seconds since the epoch, like ``time.time``; injected so tests can move time."""

_DATE_RE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def format_instant(ms: int) -> str:
    """``2026-11-24T19:30:00.123Z``."""
    seconds, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def date_range(value: str) -> tuple[int, int]:
    """The half-open millisecond range ``[lo, hi)`` a FHIR date/dateTime/instant value covers.

    ``2026-11-24`` covers the whole (UTC) day; ``...T19:30:00.123Z`` covers one millisecond. A time
    without a zone is taken as UTC. Raises ``ValueError`` for anything else.
    """
    m = _DATE_RE.fullmatch(value.replace(" ", "+"))  # an unencoded "+" in a query arrives as a space
    if m is None:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    y = int(year)
    if month is None:
        return _ms(y, 1, 1), _ms(y + 1, 1, 1)
    mo = int(month)
    if day is None:
        return _ms(y, mo, 1), _ms(y + mo // 12, mo % 12 + 1, 1)
    if hour is None:
        lo = _ms(y, mo, int(day))
        return lo, lo + 86_400_000
    lo = _ms(y, mo, int(day), int(hour), int(minute), int(second or 0))
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        lo -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * 1000
    if second is None:
        span = 60_000
    elif frac is None:
        span = 1000
    elif len(frac) <= 3:
        span = 10 ** (3 - len(frac))
        lo += int(frac) * span
    else:
        # Finer than our millisecond resolution: only whole milliseconds strictly inside can match.
        lo += int(frac[:3])
        return (lo + 1 if frac[3:].strip("0") else lo), lo + 1
    return lo, lo + span


def _ms(year: int, month: int, day: int, *hms: int) -> int:
    """Epoch milliseconds of a UTC date-time; ``ValueError`` when a field is out of range."""
    hour, minute, second = (*hms, 0, 0, 0)[:3]
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * 1000

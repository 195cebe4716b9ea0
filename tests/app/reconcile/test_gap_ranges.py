"""The range arithmetic of the gap pass: what of the ledger's missing numbers no gap row covers yet, and
what of a gap the ledger still lists missing."""

from __future__ import annotations

from app.ingest.ledger import MAX_MISSING_RANGES
from app.reconcile.gaps import count, intersect, still_open, subtract


def test_a_range_already_tracked_is_not_tracked_again_and_new_ranges_are() -> None:
    assert subtract([(2, 2), (5, 6)], [(2, 2)]) == [(5, 6)]
    assert subtract([(2, 2)], []) == [(2, 2)]
    assert subtract([], [(1, 9)]) == []


def test_pieces_of_a_tracked_gap_split_by_late_events_stay_covered() -> None:
    # tracked as 2..9; 4 and 7 arrived since: the ledger lists 2..3, 5..6, 8..9
    assert subtract([(2, 3), (5, 6), (8, 9)], [(2, 9)]) == []


def test_a_range_partly_covered_keeps_only_what_is_outside() -> None:
    assert subtract([(1, 10)], [(3, 4), (7, 7)]) == [(1, 2), (5, 6), (8, 10)]
    assert subtract([(1, 10)], [(0, 3), (9, 12)]) == [(4, 8)]


def test_what_of_a_gap_is_still_missing() -> None:
    missing = [(2, 3), (5, 6), (20, 25)]
    assert intersect(3, 5, missing) == [(3, 3), (5, 5)]
    assert intersect(7, 19, missing) == []
    assert count(intersect(1, 30, missing)) == 10


def test_a_gap_a_full_ledger_dropped_is_still_missing_not_filled() -> None:
    full = [(n * 10, n * 10) for n in range(1, MAX_MISSING_RANGES + 1)]  # 10, 20, ... the oldest dropped
    assert still_open(3, 4, full) == [(3, 4)]  # below all it lists: dropped, not filled
    assert still_open(11, 12, full) == []  # between ranges it lists: the events arrived
    assert still_open(3, 4, full[:5]) == []  # a ledger with room drops nothing: filled

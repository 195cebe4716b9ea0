"""The demo's verdict: lost is said only of drained work; a deadline passed with work pending says so."""

from __future__ import annotations

from rich.text import Text

from devstack.demo import _verdict as _marked_up
from devstack.ledger import LedgerReport


def _verdict(reports: list[LedgerReport], *, elapsed: float, timeout: float) -> str:
    """The verdict as printed (rich markup rendered away)."""
    return Text.from_markup(_marked_up(reports, elapsed, timeout)).plain


def test_work_pending_at_the_deadline_is_not_drained_never_lost() -> None:
    """Redis absent: the receiver committed 120 rows and nothing drained them."""
    report = LedgerReport("fac", expected=120, missing=[f"Patient/p{n}" for n in range(120)])
    report.inbox = {"pending": 120}

    verdict = _verdict([report], elapsed=120.0, timeout=120)

    assert "not drained in 120 s: 120 pending" in verdict
    assert "lost" not in verdict
    assert report.lost == 0
    assert not report.ok


def test_notifications_the_sender_still_holds_count_as_pending() -> None:
    report = LedgerReport("fac", expected=5, missing=["Patient/p1"], undelivered=1)

    assert "not drained in 90 s: 1 pending (1 not yet delivered by the EHR, 0 in the inbox)" in _verdict(
        [report], elapsed=90.0, timeout=90
    )


def test_drained_work_missing_from_postgres_is_lost() -> None:
    report = LedgerReport("fac", expected=3, matched=1, missing=["Patient/p1"], behind=["Patient/p2"])
    report.inbox = {"done": 2, "dead": 1}

    verdict = _verdict([report], elapsed=4.2, timeout=120)

    assert "lost = 2" in verdict
    assert "1 dead letters" in verdict
    assert "every change reached Postgres" not in verdict


def test_everything_in_postgres_is_lost_zero() -> None:
    report = LedgerReport("fac", expected=3, matched=3, inbox={"done": 3})

    assert "lost = 0" in _verdict([report], elapsed=2.5, timeout=120)
    assert report.ok

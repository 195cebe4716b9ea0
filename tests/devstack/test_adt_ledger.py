from __future__ import annotations

from devstack.ledger import check_adt_ledger


def _message(control_id: str, status: str) -> dict[str, object]:
    return {"control_id": control_id, "status": status, "event": "A08"}


def test_an_acked_message_that_was_not_stored_is_lost() -> None:
    messages = [_message("1", "acked"), _message("2", "acked"), _message("3", "rejected")]
    report = check_adt_ledger("fac", messages, stored_control_ids={"1"})
    assert report.acked_not_stored == ["2"]
    assert report.rejected == ["3"]
    assert not report.ok


def test_the_ledger_holds_when_every_ack_is_stored_and_nothing_is_pending() -> None:
    messages = [_message("1", "acked"), _message("2", "acked")]
    assert check_adt_ledger("fac", messages, stored_control_ids={"1", "2"}).ok
    assert not check_adt_ledger("fac", [*messages, _message("3", "pending")], {"1", "2"}).ok
    assert not check_adt_ledger("fac", [*messages, _message("4", "failed")], {"1", "2"}).ok

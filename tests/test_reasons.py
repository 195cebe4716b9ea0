"""The reason slugs are exact and listed once: the error tree is the source, README's table its copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.errors import (
    EHRServerError,
    EHRServerErrorPermanent,
    IngestError,
    TransientEHRError,
    adt_reject_reasons,
    handling,
    notification_reasons,
    reasons,
)
from app.vendors.registry import adapter_for

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_reason_slug_belongs_to_one_class() -> None:
    found = reasons()
    assert len(found) == len(set(found.values()))
    assert all(issubclass(cls, IngestError) for cls in found.values())


def test_readme_lists_exactly_the_reasons_of_the_error_tree_with_their_handling() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- reasons:start -->")[1].split("<!-- reasons:end -->")[0]
    listed = {m[0]: m[1] for m in re.findall(r"^\| `([a-z0-9_]+)` \| (\w+) \|", table, flags=re.M)}
    expected = {slug: handling(cls) for slug, cls in reasons().items()}
    assert listed == expected


def test_readme_lists_exactly_the_receivers_notification_reasons() -> None:
    text = README.read_text(encoding="utf-8")
    listed = text.split("<!-- notification-reasons:start -->")[1].split("<!-- notification-reasons:end -->")[
        0
    ]
    assert re.findall(r"`([a-z_]+)`", listed) == list(notification_reasons())


def test_readme_lists_exactly_the_mllp_listeners_reject_reasons() -> None:
    text = README.read_text(encoding="utf-8")
    listed = text.split("<!-- adt-reasons:start -->")[1].split("<!-- adt-reasons:end -->")[0]
    assert re.findall(r"`([a-z_]+)`", listed) == list(adt_reject_reasons())


def test_branches_of_the_tree_carry_no_reason_a_row_could_show() -> None:
    branches = {"error", "configuration", "ehr_error", "ehr_transient", "ehr_permanent", "politeness_wait"}
    assert branches.isdisjoint(reasons())
    assert "bad_notification" not in reasons()
    assert "bad_message" not in reasons()


def test_transient_and_permanent_are_class_distinctions() -> None:
    for cls in reasons().values():
        assert not (cls.permanent and issubclass(cls, TransientEHRError)), cls.__name__


@pytest.mark.parametrize(
    ("vendor", "body", "expected"),
    [
        (
            "generic",
            {"resourceType": "OperationOutcome", "issue": [{"code": "not-supported"}]},
            EHRServerError,
        ),
        (
            "oracle",
            {"resourceType": "OperationOutcome", "issue": [{"code": "not-supported"}]},
            EHRServerErrorPermanent,
        ),
        ("oracle", {"resourceType": "OperationOutcome", "issue": [{"code": "exception"}]}, EHRServerError),
        ("oracle", None, EHRServerError),
    ],
)
def test_a_plain_500_is_classified_by_the_vendors_adapter(
    vendor: str, body: dict[str, object] | None, expected: type[IngestError]
) -> None:
    error = adapter_for(vendor).server_error(500, body)
    assert type(error) is expected
    assert error.permanent is (expected is EHRServerErrorPermanent)

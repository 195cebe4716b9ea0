"""The wire's numbers are data: FHIR decimals decoded and encoded with every digit they were sent with."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.fhir import jsonwire
from app.fhir.resources import content_hash

WIRE = b'{"a": 1.00, "b": 66.899999999999991, "c": 1.000000000000000000E-245, "d": 7, "e": -0.0}'


def test_decimals_are_decoded_with_their_digits_and_integers_stay_integers() -> None:
    body = jsonwire.loads(WIRE)
    assert [str(body[k]) for k in "abc"] == ["1.00", "66.899999999999991", "1.000000000000000000E-245"]
    assert body["d"] == 7
    assert isinstance(body["d"], int)


def test_encoding_writes_the_digits_as_sent() -> None:
    assert jsonwire.dumps(jsonwire.loads(WIRE)) == WIRE.decode()
    assert jsonwire.dumps(jsonwire.loads(WIRE), canonical=True) == WIRE.decode().replace(" ", "")


def test_a_body_without_decimals_encodes_as_the_standard_library_does() -> None:
    assert jsonwire.dumps({"x": [1, "é", None]}) == '{"x": [1, "\\u00e9", null]}'


@pytest.mark.parametrize("raw", [b"[NaN]", b'{"v": Infinity}', b"[-Infinity]", b"{", b"\xff"])
def test_what_is_not_json_is_refused_with_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - JSONDecodeError, UnicodeDecodeError or NaN's
        jsonwire.loads(raw)


def test_precision_is_content_two_spellings_of_one_value_hash_apart() -> None:
    def body(value: str) -> dict[str, object]:
        return dict(jsonwire.loads(f'{{"resourceType": "Observation", "id": "o", "v": {value}}}'))

    assert content_hash(body("1.00")) != content_hash(body("1.0"))
    assert content_hash(body("1.00")) == content_hash(body("1.00"))
    assert Decimal("1.00") == body("1.00")["v"]

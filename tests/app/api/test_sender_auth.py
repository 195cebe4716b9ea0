"""Sender authentication, per facility, before any parsing: 401 with an OperationOutcome, nothing stored."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from app.facilities.schemas import FacilitiesFile, WebhookConfig
from tests.app.api.conftest import OLD_SECRET, SECRET, WHSEC, Facilities, bearer, shared_secret, signed
from tests.app.api.fixtures_shapes import (
    dumps,
    hub_signature,
    medplum_headers,
    medplum_resource,
    r4b_bundle,
    standard_webhooks_headers,
    subscription_status,
)
from tests.fixtures import backport_id_only

pytestmark = pytest.mark.anyio
JSON = {"Content-Type": "application/fhir+json"}
BODY = dumps(backport_id_only([(1, "Patient/p1")]))


async def _post(client: httpx.AsyncClient, fid: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post(f"/hooks/{fid}", content=body, headers={**JSON, **headers})


def _reason_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    outcome: dict[str, Any] = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "security"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": SECRET},
        {"Authorization": f"Bearer {SECRET}x"},
    ],
)
async def test_shared_secret_missing_or_wrong_is_401_and_nothing_stored(
    receiver: httpx.AsyncClient, facilities: Facilities, headers: dict[str, str]
) -> None:
    fid = facilities.add(shared_secret())
    _reason_401(await _post(receiver, fid, BODY, headers))
    assert facilities.inbox(fid) == []


async def test_shared_secret_is_checked_before_the_body_is_read(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    _reason_401(await _post(receiver, fid, b"not json at all", {"Authorization": "Bearer wrong"}))


async def test_api_key_header_without_scheme(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(shared_secret(header="X-Api-Key", scheme=None))
    assert (await _post(receiver, fid, BODY, {"X-Api-Key": SECRET})).status_code == 200
    _reason_401(await _post(receiver, fid, BODY, {"Authorization": f"Bearer {SECRET}"}))


async def test_previous_secret_is_accepted_during_rotation(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret(previous_secret={"env": "EHRI_TEST_HOOK_OLD_SECRET"}))
    assert (await _post(receiver, fid, BODY, bearer(OLD_SECRET))).status_code == 200
    assert (
        await _post(receiver, fid, dumps(backport_id_only([(2, "Patient/p")])), bearer())
    ).status_code == 200
    assert len(facilities.inbox(fid)) == 2


async def test_facility_without_webhook_config_refuses_everyone(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(None)
    _reason_401(await _post(receiver, fid, BODY, bearer()))


async def test_medplum_x_signature_over_the_raw_body(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("x-signature"), vendor="medplum")
    body = dumps(medplum_resource())
    assert (await _post(receiver, fid, body, medplum_headers(body, SECRET))).status_code == 200
    (row,) = facilities.inbox(fid)
    assert (row.subscription, row.interaction, row.focus_id) == ("Subscription/mp-sub-1", "update", "o-mp")


async def test_medplum_delete_is_signed_empty_object(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("x-signature"), vendor="medplum")
    headers = medplum_headers(b"{}", SECRET, interaction="delete", deleted="Observation/o-mp")
    assert (await _post(receiver, fid, b"{}", headers)).status_code == 200
    (row,) = facilities.inbox(fid)
    assert (row.interaction, row.focus_type, row.focus_id, row.payload) == (
        "delete",
        "Observation",
        "o-mp",
        None,
    )


async def test_x_signature_of_another_body_is_401(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("x-signature"), vendor="medplum")
    body = dumps(medplum_resource())
    headers = medplum_headers(body + b" ", SECRET)
    _reason_401(await _post(receiver, fid, body, headers))
    _reason_401(await _post(receiver, fid, body, {**headers, "X-Signature": "not-hex"}))
    assert facilities.inbox(fid) == []


async def test_signature_is_checked_before_parsing(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("x-signature"))
    _reason_401(await _post(receiver, fid, b"{broken", {"X-Signature": "00"}))
    assert facilities.quarantine(fid) == []


async def test_athena_hub_signature(receiver: httpx.AsyncClient, facilities: Facilities) -> None:
    fid = facilities.add(signed("hub-signature"), vendor="athena")
    status = subscription_status([{"id": "e1", "eventNumber": "1", "focus": {"reference": "Patient/p1"}}])
    body = dumps(r4b_bundle(status))
    assert (
        await _post(receiver, fid, body, {"X-Hub-Signature": hub_signature(body, SECRET)})
    ).status_code == 200
    _reason_401(await _post(receiver, fid, body, {"X-Hub-Signature": hub_signature(body, "nope")}))
    sha1 = hub_signature(body, SECRET).replace("sha256=", "sha1=")
    _reason_401(await _post(receiver, fid, body, {"X-Hub-Signature": sha1}))


async def test_standard_webhooks_signature_within_the_window(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("standard-webhooks"))
    headers = standard_webhooks_headers(BODY, WHSEC, "msg_1", int(time.time()))
    assert (await _post(receiver, fid, BODY, headers)).status_code == 200


@pytest.mark.parametrize("age_s", [-600, 600])
async def test_standard_webhooks_outside_the_replay_window_is_401(
    receiver: httpx.AsyncClient, facilities: Facilities, age_s: int
) -> None:
    fid = facilities.add(signed("standard-webhooks", tolerance_s=300))
    headers = standard_webhooks_headers(BODY, WHSEC, "msg_1", int(time.time()) - age_s)
    _reason_401(await _post(receiver, fid, BODY, headers))


async def test_standard_webhooks_signature_must_cover_id_and_timestamp(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("standard-webhooks"))
    headers = standard_webhooks_headers(BODY, WHSEC, "msg_1", int(time.time()))
    _reason_401(await _post(receiver, fid, BODY, {**headers, "webhook-id": "msg_2"}))
    _reason_401(await _post(receiver, fid, BODY, {k: v for k, v in headers.items() if k != "webhook-id"}))


async def test_standard_webhooks_accepts_any_listed_signature(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(signed("standard-webhooks"))
    headers = standard_webhooks_headers(BODY, WHSEC, "msg_1", int(time.time()))
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    assert (await _post(receiver, fid, BODY, headers)).status_code == 200


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_the_authorization_scheme_is_case_insensitive(
    receiver: httpx.AsyncClient, facilities: Facilities, scheme: str
) -> None:
    """RFC 9110 §11.1: the auth-scheme is case-insensitive; the credentials are not."""
    fid = facilities.add(shared_secret())
    assert (await _post(receiver, fid, BODY, {"Authorization": f"{scheme} {SECRET}"})).status_code == 200
    _reason_401(await _post(receiver, fid, BODY, {"Authorization": f"{scheme} {SECRET.upper()}"}))


async def test_the_scheme_may_be_followed_by_several_spaces(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    fid = facilities.add(shared_secret())
    assert (await _post(receiver, fid, BODY, {"Authorization": f"Bearer   {SECRET}"})).status_code == 200
    _reason_401(await _post(receiver, fid, BODY, {"Authorization": f"Bearer{SECRET}"}))
    _reason_401(await _post(receiver, fid, BODY, {"Authorization": f"Basic {SECRET}"}))


async def test_an_unknown_facility_cannot_be_told_from_a_wrong_secret(
    receiver: httpx.AsyncClient, facilities: Facilities
) -> None:
    """Same status, same body, byte for byte, whatever the facility's method and header: an
    unauthenticated caller learns nothing about which facility ids exist."""
    known = facilities.add(shared_secret())
    api_key = facilities.add(shared_secret(header="X-Api-Key", scheme=None))
    signed_by = facilities.add(signed("x-signature"), vendor="medplum")
    no_webhook = facilities.add(None)
    answers = [
        await _post(receiver, "no-such-facility", BODY, {"Authorization": "Bearer guess"}),
        await _post(receiver, "no-such-facility", BODY, {}),
        await _post(receiver, known, BODY, {"Authorization": "Bearer guess"}),
        await _post(receiver, known, BODY, {}),
        await _post(receiver, api_key, BODY, {"Authorization": "Bearer guess"}),
        await _post(receiver, signed_by, BODY, {"X-Signature": "00"}),
        await _post(receiver, no_webhook, BODY, {"Authorization": "Bearer guess"}),
    ]
    assert {(a.status_code, a.content, a.headers["content-type"]) for a in answers} == {
        (answers[0].status_code, answers[0].content, answers[0].headers["content-type"])
    }
    _reason_401(answers[0])
    assert "no-such-facility" not in answers[0].text


def test_the_original_webhook_form_still_validates() -> None:
    config = WebhookConfig.model_validate(
        {"header": "Authorization", "scheme": "Bearer", "secret": {"env": "X"}}
    )
    assert (config.method, config.effective_header) == ("shared-secret", "Authorization")


def test_signature_methods_default_their_header() -> None:
    file = FacilitiesFile.model_validate(
        {
            "facilities": [
                {
                    "id": "mp",
                    "vendor": "medplum",
                    "base_url": "https://medplum.example/fhir/R4",
                    "auth": {"client_id": "c", "private_key": {"env": "K"}},
                    "webhook": {"method": "x-signature", "secret": {"file": "/run/secrets/mp"}},
                }
            ]
        }
    )
    webhook = file.facilities[0].webhook
    assert webhook is not None
    assert webhook.effective_header == "X-Signature"

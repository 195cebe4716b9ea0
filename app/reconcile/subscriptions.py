"""The Subscription we keep at each facility's EHR: create or update it, remove it, and watch it.

- ``subscribe``: builds the Subscription from the facility's ``subscription`` and ``webhook`` blocks
  (``desired_subscription``, pure), creates it (POST) or updates ours (PUT) — nothing is sent when what we
  would ask for is what we last asked for and the server still has it —, re-reads it (the server may change
  the heartbeat, the payload, the status) and stores what it accepted. Idempotent.
- ``unsubscribe``: DELETE; one the server no longer knows is already gone.
- ``check_subscription`` (periodic, ``reconciler.tasks``): ``$status`` where the probe found it advertised,
  else a read. ``error``/``off`` (or gone): the window since the last good event (``subscription_ledger``)
  is recorded for the reconciler (``reconcile_window_requested``), then the subscription is re-activated
  (PUT ``status=requested``: the server handshakes) or re-created. One that ends within
  ``renew_before_days`` is renewed.

Services flush; the caller owns the transaction. Secrets are resolved here and sent to the facility's own
EHR only; they are never logged nor stored (``requested`` keeps a hash of the secret-bearing parts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.db.models import Facility, FacilitySubscription, ReconcileRequest, SubscriptionLedger
from app.ehr.client import EHRClient
from app.errors import ConfigInvalid, EHRRejected, IngestError, UnparseableResource
from app.facilities.schemas import SubscriptionConfig, WebhookConfig
from app.facilities.secrets import resolve_secret
from app.fhir import jsonwire
from app.reconcile.probe import load_capabilities

log = structlog.get_logger("reconcile.subscriptions")

_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
PAYLOAD_EXT = f"{_BACKPORT}/backport-payload-content"
HEARTBEAT_EXT = f"{_BACKPORT}/backport-heartbeat-period"
FILTER_EXT = f"{_BACKPORT}/backport-filter-criteria"
SECRET_EXT = "https://medplum.com/fhir/StructureDefinition/subscription-secret"  # noqa: S105 - a URL

SubscribeResult = Literal["created", "updated", "unchanged", "recreated"]


# -- building ---------------------------------------------------------------------------------------


def _auth_parts(webhook: WebhookConfig | None) -> tuple[list[str], str | None]:
    """Our authentication as the EHR must send it: channel headers (a shared secret) or a signing secret."""
    if webhook is None:
        return [], None
    secret = resolve_secret(webhook.secret).strip()
    if webhook.method == "shared-secret":
        value = f"{webhook.scheme} {secret}" if webhook.scheme else secret
        return [f"{webhook.effective_header}: {value}"], None
    if webhook.method in ("x-signature", "hub-signature"):
        return [], secret
    raise ConfigInvalid(f"webhook method {webhook.method} cannot be asked of an EHR in a Subscription")


def desired_subscription(
    config: SubscriptionConfig, webhook: WebhookConfig | None, *, now: datetime, status: str | None = None
) -> dict[str, Any]:
    """The Subscription resource to send (pure, given resolved secrets): R4 with the Subscriptions Backport
    extensions for a topic (``backport-r4``, ``r4b``), the R5 resource for ``r5``, a plain R4 criteria
    subscription with a secret for Medplum and HAPI (``criteria``)."""
    headers, secret = _auth_parts(webhook)
    end = (
        (now + timedelta(days=config.lifetime_days)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if config.lifetime_days
        else None
    )
    if config.style == "r5":
        return _r5(config, headers, end, status)
    resource: dict[str, Any] = {"resourceType": "Subscription", "reason": "ehr-ingest"}
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": str(config.endpoint)}
    if config.style == "criteria":
        resource["status"] = status or "active"
        resource["criteria"] = config.criteria
        if config.payload != "empty":
            channel["payload"] = "application/fhir+json"
    else:
        resource["status"] = status or "requested"
        resource["criteria"] = config.topic
        if config.criteria:
            resource["_criteria"] = {"extension": [{"url": FILTER_EXT, "valueString": config.criteria}]}
        channel["payload"] = "application/fhir+json"
        channel["_payload"] = {"extension": [{"url": PAYLOAD_EXT, "valueCode": config.payload}]}
        if config.heartbeat_s:
            channel["extension"] = [{"url": HEARTBEAT_EXT, "valueUnsignedInt": config.heartbeat_s}]
    if headers:
        channel["header"] = headers
    resource["channel"] = channel
    if secret is not None:
        resource["extension"] = [{"url": SECRET_EXT, "valueString": secret}]
    if end is not None:
        resource["end"] = end
    return resource


def _r5(
    config: SubscriptionConfig, headers: list[str], end: str | None, status: str | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": status or "requested",
        "reason": "ehr-ingest",
        "topic": config.topic,
        "channelType": {
            "system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type",
            "code": "rest-hook",
        },
        "endpoint": str(config.endpoint),
        "contentType": "application/fhir+json",
        "content": config.payload,
    }
    if config.heartbeat_s:
        resource["heartbeatPeriod"] = config.heartbeat_s
    if config.criteria:
        resource["filterBy"] = [{"filterParameter": "_type", "value": config.criteria.split("?", 1)[0]}]
    if headers:
        resource["parameter"] = [
            {"name": h.split(":", 1)[0].strip(), "value": h.split(":", 1)[1].strip()} for h in headers
        ]
    if end is not None:
        resource["end"] = end
    return resource


def _fingerprint(resource: dict[str, Any]) -> dict[str, Any]:
    """What we asked for, as stored: the secret-free parts and a hash of the whole (secrets change it)."""
    digest = hashlib.sha256(jsonwire.dumps(_without_end(resource), canonical=True).encode()).hexdigest()
    return {"sha256": digest, "end": resource.get("end")}


def _without_end(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("end", "status")}


# -- reading what the server accepted ---------------------------------------------------------------


def _extension(element: Any, url: str, key: str) -> Any:
    if not isinstance(element, dict):
        return None
    for ext in element.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext.get(key)
    return None


def _accepted_heartbeat(resource: dict[str, Any]) -> int | None:
    value = resource.get("heartbeatPeriod")
    if value is None:
        value = _extension(resource.get("channel"), HEARTBEAT_EXT, "valueUnsignedInt")
    return int(value) if isinstance(value, int | float) else None


def _parse_end(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _store(
    session: Session, facility_id: str, resource: dict[str, Any], requested: dict[str, Any], *, now: datetime
) -> FacilitySubscription:
    subscription_id = resource.get("id")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise UnparseableResource("the EHR answered a Subscription without an id")
    row = session.get(FacilitySubscription, facility_id)
    if row is None:
        row = FacilitySubscription(facility_id=facility_id, reactivations=0)
        session.add(row)
    row.subscription_id = subscription_id
    row.resource = _redacted(resource)
    row.requested = requested
    row.status = resource.get("status") if isinstance(resource.get("status"), str) else None
    row.end = _parse_end(resource.get("end"))
    row.heartbeat_s = _accepted_heartbeat(resource)
    row.last_checked_at = now
    row.updated_at = now
    session.flush()
    return row


def _redacted(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without our secrets (channel headers, the secret extension, R5 parameters)."""
    copy = jsonwire.loads(jsonwire.dumps(resource))
    channel = copy.get("channel")
    if isinstance(channel, dict) and "header" in channel:
        channel["header"] = [str(h).split(":", 1)[0] + ": ***" for h in channel["header"]]
    if isinstance(copy.get("parameter"), list):
        copy["parameter"] = [{**p, "value": "***"} for p in copy["parameter"] if isinstance(p, dict)]
    if isinstance(copy.get("extension"), list):
        copy["extension"] = [
            {**e, "valueString": "***"} if isinstance(e, dict) and e.get("url") == SECRET_EXT else e
            for e in copy["extension"]
        ]
    assert isinstance(copy, dict)
    return copy


def _expect_subscription(status: int, body: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if status >= 300:
        raise EHRRejected(f"{what}: {status} from EHR")
    if body is None or body.get("resourceType") != "Subscription":
        raise UnparseableResource(f"{what} did not return a Subscription")
    return body


def _read(client: EHRClient, subscription_id: str) -> dict[str, Any] | None:
    status, body = client.fetch_json(f"Subscription/{subscription_id}")
    if status in (404, 410):
        return None
    return _expect_subscription(status, body, "Subscription read")


# -- subscribe / unsubscribe ------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribed:
    result: SubscribeResult
    subscription_id: str
    status: str | None
    heartbeat_s: int | None
    end: datetime | None


def _config(facility: Facility) -> tuple[SubscriptionConfig, WebhookConfig | None]:
    if not facility.subscription:
        raise ConfigInvalid(f"facility {facility.id} has no `subscription` block")
    config = SubscriptionConfig.model_validate(facility.subscription)
    webhook = WebhookConfig.model_validate(facility.webhook) if facility.webhook else None
    return config, webhook


def subscribe(
    session: Session, facility: Facility, client: EHRClient, *, now: datetime, status: str | None = None
) -> Subscribed:
    """Create or update the facility's subscription at its EHR (see the module docstring)."""
    config, webhook = _config(facility)
    desired = desired_subscription(config, webhook, now=now, status=status)
    requested = _fingerprint(desired)
    row = session.get(FacilitySubscription, facility.id)
    result: SubscribeResult = "created"
    if row is not None:
        current = _read(client, row.subscription_id)
        if current is None:
            result = "recreated"
        elif (
            row.requested.get("sha256") == requested["sha256"]
            and status is None
            and current.get("status") in ("active", "requested")
            and not _renewal_due(row, config, now)
        ):
            stored = _store(session, facility.id, current, row.requested, now=now)
            return _subscribed("unchanged", stored)
        else:
            result = "updated"
            code, body = client.write(
                "PUT", f"Subscription/{row.subscription_id}", {**desired, "id": row.subscription_id}
            )
            if code not in (404, 410):
                _expect_subscription(code, body, "Subscription update")
            else:
                result = "recreated"
    if result in ("created", "recreated"):
        code, body = client.write("POST", "Subscription", desired)
        created = _expect_subscription(code, body, "Subscription create")
        subscription_id = str(created.get("id") or "")
    else:
        assert row is not None
        subscription_id = row.subscription_id
    # Re-read: the server may have changed the heartbeat period, the payload or the status.
    accepted = _read(client, subscription_id)
    if accepted is None:
        raise EHRRejected("the EHR does not find the Subscription it just accepted")
    stored = _store(session, facility.id, accepted, requested, now=now)
    log.info(
        "reconcile.subscription.subscribed", facility_id=facility.id, result=result, status=stored.status
    )
    return _subscribed(result, stored)


def _subscribed(result: SubscribeResult, row: FacilitySubscription) -> Subscribed:
    return Subscribed(result, row.subscription_id, row.status, row.heartbeat_s, row.end)


def _renewal_due(row: FacilitySubscription, config: SubscriptionConfig, now: datetime) -> bool:
    return row.end is not None and row.end - timedelta(days=config.renew_before_days) <= now


def unsubscribe(session: Session, facility: Facility, client: EHRClient) -> bool:
    """Remove the facility's subscription at its EHR; False when there was none to remove."""
    row = session.get(FacilitySubscription, facility.id)
    if row is None:
        return False
    code, _ = client.write("DELETE", f"Subscription/{row.subscription_id}")
    if code >= 300 and code not in (404, 410):
        raise EHRRejected(f"Subscription delete: {code} from EHR")
    session.delete(row)
    session.flush()
    log.info("reconcile.subscription.removed", facility_id=facility.id)
    return True


# -- the periodic check -----------------------------------------------------------------------------


def reconcile_window_requested(
    session: Session,
    facility_id: str,
    since: datetime,
    *,
    until: datetime | None = None,
    reason: str = "subscription_error",
    subscription_id: str | None = None,
) -> ReconcileRequest:
    """Record that ``[since, until)`` of ``facility_id`` must be reconciled (the engine consumes open
    requests). An open request of the same reason starting at the same time is not recorded twice."""
    open_request = session.scalars(
        select(ReconcileRequest).where(
            ReconcileRequest.facility_id == facility_id,
            ReconcileRequest.reason == reason,
            ReconcileRequest.since == since,
            ReconcileRequest.consumed_at.is_(None),
        )
    ).first()
    if open_request is not None:
        return open_request
    request = ReconcileRequest(
        facility_id=facility_id, since=since, until=until, reason=reason, subscription_id=subscription_id
    )
    session.add(request)
    session.flush()
    log.info("reconcile.window_requested", facility_id=facility_id, reason=reason)
    return request


def last_good_event_at(session: Session, facility_id: str, row: FacilitySubscription) -> datetime:
    """When the subscription last delivered (an event or a heartbeat), from ``subscription_ledger``; the
    time we (re)created it when nothing was ever received."""
    ref = f"Subscription/{row.subscription_id}"
    latest = session.scalar(
        select(
            func.max(
                func.greatest(
                    SubscriptionLedger.highest_event_at,
                    SubscriptionLedger.last_heartbeat_at,
                    SubscriptionLedger.last_handshake_at,
                )
            )
        ).where(
            SubscriptionLedger.facility_id == facility_id,
            or_(
                SubscriptionLedger.subscription == ref,
                SubscriptionLedger.subscription == row.subscription_id,
                SubscriptionLedger.subscription.endswith(f"/{ref}"),
            ),
        )
    )
    return latest if latest is not None else row.created_at


@dataclass(frozen=True)
class Checked:
    status: str | None
    action: Literal["ok", "reactivated", "recreated", "renewed", "none"]
    window_since: datetime | None = None


def _server_status(client: EHRClient, subscription_id: str, use_status_operation: bool) -> str | None:
    """The subscription's status at the server, or None when the server no longer knows it."""
    if not use_status_operation:
        current = _read(client, subscription_id)
        return None if current is None else str(current.get("status"))
    code, body = client.fetch_json(f"Subscription/{subscription_id}/$status")
    if code in (404, 410):
        return None
    if body is None:
        raise UnparseableResource("$status did not return JSON")
    status = _status_of(body)
    if status is None:
        raise UnparseableResource("$status answered no status")
    return status


def _status_of(body: dict[str, Any]) -> str | None:
    """The status in a ``$status`` answer: backport ``Parameters`` or a ``SubscriptionStatus``."""
    candidates: list[Any] = [body]
    for entry in body.get("entry", []) if isinstance(body.get("entry"), list) else []:
        if isinstance(entry, dict):
            candidates.append(entry.get("resource"))
    for resource in candidates:
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "SubscriptionStatus" and isinstance(resource.get("status"), str):
            return str(resource["status"])
        if resource.get("resourceType") == "Parameters":
            for part in resource.get("parameter", []):
                if isinstance(part, dict) and part.get("name") == "status":
                    value = part.get("valueCode") or part.get("valueString")
                    if isinstance(value, str):
                        return value
    return None


def check_subscription(session: Session, facility: Facility, client: EHRClient, *, now: datetime) -> Checked:
    """Check the facility's subscription once (see the module docstring)."""
    row = session.get(FacilitySubscription, facility.id)
    if row is None:
        return Checked(None, "none")
    capabilities = load_capabilities(session, facility.id)
    use_status = capabilities is not None and capabilities.subscription_status
    status = _server_status(client, row.subscription_id, use_status)
    row.last_checked_at = now
    if status in ("error", "off") or status is None:
        since = last_good_event_at(session, facility.id, row)
        reason = "subscription_gone" if status is None else f"subscription_{status}"
        reconcile_window_requested(
            session, facility.id, since, until=None, reason=reason, subscription_id=row.subscription_id
        )
        log.warning("reconcile.subscription.down", facility_id=facility.id, status=status or "gone")
        subscribed = subscribe(
            session, facility, client, now=now, status=None if status is None else "requested"
        )
        row = session.get(FacilitySubscription, facility.id)
        assert row is not None
        row.reactivations += 1
        row.last_error = reason
        session.flush()
        action: Literal["reactivated", "recreated"] = "recreated" if status is None else "reactivated"
        return Checked(subscribed.status, action, since)
    config, _ = _config(facility)
    if _renewal_due(row, config, now):
        subscribed = subscribe(session, facility, client, now=now)
        return Checked(subscribed.status, "renewed")
    row.status = status
    row.last_error = None
    session.flush()
    return Checked(status, "ok")


def facilities_with_subscriptions(session: Session) -> list[str]:
    return list(
        session.scalars(select(FacilitySubscription.facility_id).order_by(FacilitySubscription.facility_id))
    )


def record_check_failure(session: Session, facility_id: str, exc: IngestError, *, now: datetime) -> None:
    """A check that could not reach or understand the EHR: visible on the row, checked again next time."""
    row = session.get(FacilitySubscription, facility_id)
    if row is None:
        return
    row.last_checked_at = now
    row.last_error = exc.reason
    session.flush()

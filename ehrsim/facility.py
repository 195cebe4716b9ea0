"""One simulated EHR: its profile, store, generator, auth, faults, subscriptions and sender."""

from __future__ import annotations

import zlib
from typing import Any

from ehrsim.auth import TokenIssuer
from ehrsim.config import FacilityConfig, WebhookConfig
from ehrsim.faults import Faults, FaultUpdate
from ehrsim.generator import Generator, mrn_system
from ehrsim.groups import Groups
from ehrsim.hl7 import ADT_TYPES, PROFILE_VERSIONS, Wire, adt_event, assigning_authority
from ehrsim.instants import Clock, format_instant
from ehrsim.mllp import MllpSender
from ehrsim.profiles import Profile, RetryPolicy, customize, get_profile
from ehrsim.search import SearchCache
from ehrsim.sender import Sender, SenderStats
from ehrsim.store import Change, ResourceStore
from ehrsim.subscriptions import Requested, Subscription
from ehrsim.traffic import Traffic


class Facility:
    def __init__(self, config: FacilityConfig, *, clock: Clock, public_base_url: str) -> None:
        self.id = config.id
        self.config = config
        self.profile: Profile = customize(get_profile(config.profile), config.profile_overrides)
        self.time_scale = config.time_scale
        self.clock = clock
        self.store = ResourceStore(
            clock,
            self.profile.resource_types,
            meta=self.profile.meta,
            uuid_versions=self.profile.uuid_version_ids,
            namespace=f"{config.id}/{config.seed}",
        )
        lifetime = config.token_lifetime_s or self.profile.token_lifetime_s * self.time_scale
        self.auth = TokenIssuer(config.clients, lifetime, clock, profile=self.profile, seed=config.seed)
        self.faults = Faults(config.faults, seed=config.seed)
        self.traffic = Traffic()
        self.base_url = f"{public_base_url.rstrip('/')}/{config.id}/fhir"
        style = config.webhook.style if config.webhook is not None else None
        self.sender: Sender | None = None
        if config.webhook is not None or self.profile.notification is not None:
            self.sender = Sender(
                config.id,
                self.base_url,
                self.faults,
                concurrency=config.webhook.concurrency if config.webhook is not None else 8,
                error_after_drops=self.profile.error_after_drops,
                now_ms=lambda: int(clock() * 1000),
            )
        self._default_style = style or self.profile.notification or "backport-r4"
        self._subscription_seq = 0
        self.paging_epoch = 0  # searches begun in an earlier epoch have an expired paging session
        self.searches = SearchCache()  # the searches a HAPI-style facility holds for its _getpages links
        if config.webhook is not None:
            assert self.sender is not None  # created above whenever there is a webhook
            self.sender.add(self._configured_subscription(config.webhook))
        self.mllp: MllpSender | None = None
        self._encounter_status: dict[str, str] = {}  # as last announced: an update's event is its transition
        if config.mllp is not None:
            self.mllp = MllpSender(config.id, config.mllp, self._wire(), self.faults)
        self._generator = Generator(self.store, config.seed, config.id, self.profile)
        # The chart that exists before the subscription starts: no notifications.
        self._generator.populate(config.patients)
        self.groups = Groups(self.store, meta=self.profile.meta)
        for group in config.groups:
            self.groups.put(group.id, group.members, int(clock() * 1000))
        if self.mllp is not None:
            for record in (
                self.store.records_of("Encounter") if "Encounter" in self.store.resource_types else []
            ):
                self._encounter_status[record.id] = str(record.resource.get("status"))

    @property
    def supports_subscriptions(self) -> bool:
        """Whether the FHIR API serves Subscription resources: only where the vendor has them. A
        configured ``webhook`` on a profile without them (Epic, Oracle, MEDITECH) still delivers its
        notifications, standing in for the vendor's own event feed, but no Subscription is served."""
        return self.sender is not None and self.profile.notification is not None

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def activity(self, changes: int, *, adt: bool = False) -> None:
        """Perform ``changes`` seeded changes, each queued as a notification for matching subscriptions
        (``adt``: Patient and Encounter changes only, the mix of an ADT feed)."""
        for _ in range(changes):
            self._announce(self._generator.step_adt() if adt else self._generator.step())

    def change(self, resource_type: str, id_: str, *, delete: bool) -> Change:
        """One change of a named resource, announced as ``activity``'s are: its deletion, or (``delete``
        false) a deleted resource created again with its last content. Raises ``KeyError`` for a
        resource the store never held, ``ValueError`` for one already deleted (or live)."""
        record = self.store.get(resource_type, id_)
        if record is None:
            raise KeyError(f"{resource_type}/{id_}")
        if delete:
            change = self.store.delete(resource_type, id_)
        elif not record.deleted:
            raise ValueError(f"{resource_type}/{id_} is not deleted")
        else:
            content = {k: v for k, v in record.resource.items() if k != "meta"}
            change = self.store.put(resource_type, id_, content)
        self._announce(change)
        return change

    def _announce(self, change: Change) -> None:
        if self.sender is not None and self.sender.subscriptions:
            record = self.store.get(change.resource_type, change.id)
            resource = record.resource if record is not None and not record.deleted else None
            self.sender.enqueue(change, resource, self._identifier_focus(change, resource))
        if self.mllp is not None and change.resource_type in ADT_TYPES:
            self._announce_adt(change)

    def _wire(self) -> Wire:
        """Who the facility is on its HL7 v2 feed (``mllp:`` in the config, defaults per profile)."""
        mllp = self.config.mllp
        assert mllp is not None  # called only for a facility with a feed
        sending_facility = mllp.sending_facility or self.id.upper()
        namespace = mllp.mrn_authority or self.profile.mrn_type_text or sending_facility
        return Wire(
            sending_application=mllp.sending_application,
            sending_facility=sending_facility,
            receiving_application=mllp.receiving_application,
            receiving_facility=mllp.receiving_facility,
            version=mllp.version or PROFILE_VERSIONS[self.config.profile],
            mrn_authority=assigning_authority(namespace, mrn_system(self.profile, self.id)),
        )

    def _announce_adt(self, change: Change) -> None:
        """Queue the ADT message of a Patient or Encounter change, rendered from the stored content (a
        deleted Encounter's last content)."""
        assert self.mllp is not None  # checked by the caller
        record = self.store.get(change.resource_type, change.id)
        if record is None:
            return
        status = record.resource.get("status")
        event = adt_event(change, record.resource, self._encounter_status.get(change.id))
        if event is None:
            return
        if change.resource_type == "Encounter" and isinstance(status, str):
            self._encounter_status[change.id] = status
        if change.resource_type == "Patient":
            self.mllp.enqueue(change, event, record.resource)
            return
        subject = str((record.resource.get("subject") or {}).get("reference", ""))
        patient = self.store.get("Patient", subject.removeprefix("Patient/"))
        if patient is not None:
            self.mllp.enqueue(change, event, patient.resource, record.resource)

    def _identifier_focus(self, change: Change, resource: dict[str, Any] | None) -> dict[str, Any] | None:
        """The identifier an event names instead of a reference, for the profile's share of the creates
        and updates of its ``identifier_focus_types`` (chosen by a hash of the change: reproducible)."""
        profile = self.profile
        if resource is None or change.resource_type not in profile.identifier_focus_types:
            return None
        key = f"{self.id}/{change.resource_type}/{change.id}/{change.version}".encode()
        if zlib.crc32(key) % 1000 >= profile.identifier_focus_share * 1000:
            return None
        for identifier in resource.get("identifier") or []:
            if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
                return {"system": identifier["system"], "value": str(identifier["value"]).strip()}
        return None

    def truth(self, *, content: bool = False) -> list[dict[str, Any]]:
        """Every resource's current version. ``versioned`` is False where the profile serves no ``meta``
        (Epic): ``versionId`` is then ehrsim's own count, which no client can see, and only the content
        tells versions apart; ``content`` adds each live resource as it is served, for that comparison."""
        versioned = self.profile.meta
        return [
            {
                "resourceType": r.resource_type,
                "id": r.id,
                "versionId": r.version_id or str(r.version),
                "lastUpdated": format_instant(r.last_updated),
                "deleted": r.deleted,
                "versioned": versioned,
                **({"content": r.resource} if content and not r.deleted else {}),
            }
            for r in self.store.records()
        ]

    def notification_stats(self) -> SenderStats:
        return self.sender.stats if self.sender is not None else SenderStats()

    # -- faults ------------------------------------------------------------------------------------------

    def apply_faults(self, update: FaultUpdate) -> None:
        now = self.clock()
        self.faults.update(update, now)
        if self.faults.config.credentials_revoked:
            self.auth.revoke_all()  # a revoked client's tokens die with it
        if self.mllp is not None:
            self.mllp.faults_changed()
        for action in update.actions:
            self.faults.count(action)
            if action == "restart-counters" and self.sender is not None:
                self.sender.restart_counters()
            elif action == "expire-tokens":
                self.auth.expire_all()
            elif action == "revoke-tokens":
                self.auth.revoke_all()
            elif action == "expire-paging-sessions":
                self.paging_epoch += 1
            elif action in ("subscription-error", "subscription-off") and self.sender is not None:
                self.sender.force_status(action.removeprefix("subscription-"))

    # -- subscriptions ---------------------------------------------------------------------------------

    def create_subscription(self, requested: Requested) -> Subscription:
        assert self.sender is not None  # callers check supports_subscriptions
        self._subscription_seq += 1
        subscription = self._subscription(f"sub-{self._subscription_seq}", requested)
        self.sender.add(subscription)
        return subscription

    def update_subscription(self, subscription: Subscription, requested: Requested) -> Subscription:
        assert self.sender is not None  # a subscription exists only with a sender
        replacement = self._subscription(subscription.id, requested)
        # The event counter and the server-side settings survive an update; a new status may call for a
        # handshake.
        replacement.style = subscription.style
        replacement.retry = subscription.retry
        replacement.timeout_s = subscription.timeout_s
        replacement.hapi_deletes = subscription.hapi_deletes
        replacement.secret = requested.secret or subscription.secret
        replacement.events_since_start = subscription.events_since_start
        replacement.epoch = subscription.epoch
        replacement.retained.extend(subscription.retained)
        replacement.version = subscription.version + 1
        self.sender.add(replacement)
        return replacement

    def delete_subscription(self, subscription_id: str) -> bool:
        if self.sender is None:
            return False
        return self.sender.subscriptions.pop(subscription_id, None) is not None

    def _subscription(self, id_: str, requested: Requested) -> Subscription:
        style = self._default_style
        payloads = self.profile.payloads
        # The server may change what was asked for: a client re-reads the subscription after creating it.
        payload = requested.payload if requested.payload in payloads else payloads[0]
        heartbeat = requested.heartbeat_s
        if heartbeat is not None:
            heartbeat = max(heartbeat, self.scaled(self.profile.heartbeat_min_s))
        status = requested.status
        if status == "active" and self.profile.handshake:
            status = "requested"  # the server, not the client, activates after a handshake
        return Subscription(
            id=id_,
            endpoint=requested.endpoint,
            topic=requested.topic or "http://example.org/fhir/SubscriptionTopic/all-changes",
            style=style,
            payload=payload,
            retry=self._retry(None),
            retention=self.profile.events_retention,
            headers=requested.headers,
            criteria=requested.criteria,
            secret=requested.secret,
            heartbeat_s=heartbeat,
            timeout_s=self._timeout(),
            status=status,
            end=requested.end,
            last_updated_ms=int(self.clock() * 1000),
        )

    def _configured_subscription(self, webhook: WebhookConfig) -> Subscription:
        style = self._default_style
        payload = webhook.payload or ("empty" if style == "hapi" else self.profile.payloads[0])
        return Subscription(
            id=webhook.subscription_id,
            endpoint=webhook.url,
            topic=webhook.topic,
            style=style,
            payload=payload,
            retry=self._retry(webhook),
            retention=self.profile.events_retention,
            headers=dict(webhook.headers),
            criteria=webhook.criteria,
            secret=webhook.secret,
            hapi_deletes=webhook.hapi_deletes,
            heartbeat_s=webhook.heartbeat_s,
            timeout_s=webhook.timeout_s or self._timeout(),
            status="requested" if webhook.handshake else "active",
            last_updated_ms=int(self.clock() * 1000),
        )

    def _timeout(self) -> float:
        return self.scaled(self.profile.delivery_timeout_s)

    def _retry(self, webhook: WebhookConfig | None) -> RetryPolicy:
        """The profile's policy with durations scaled, then any explicit webhook values."""
        base = self.profile.retry
        policy = RetryPolicy(
            max_attempts=base.max_attempts,
            backoff_initial_s=self.scaled(base.backoff_initial_s),
            backoff_max_s=self.scaled(base.backoff_max_s),
            window_s=None if base.window_s is None else self.scaled(base.window_s),
        )
        if webhook is None:
            return policy
        return RetryPolicy(
            max_attempts=webhook.max_attempts or policy.max_attempts,
            backoff_initial_s=_first(webhook.backoff_initial_s, policy.backoff_initial_s),
            backoff_max_s=_first(webhook.backoff_max_s, policy.backoff_max_s),
            window_s=webhook.retry_window_s or policy.window_s,
        )


def _first(value: float | None, default: float) -> float:
    return default if value is None else value

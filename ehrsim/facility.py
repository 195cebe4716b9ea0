"""One simulated EHR: its store, generator, auth and (optional) notification sender."""

from __future__ import annotations

from typing import Any

from ehrsim.auth import TokenIssuer
from ehrsim.config import FacilityConfig
from ehrsim.generator import RESOURCE_TYPES, Generator
from ehrsim.instants import Clock, format_instant
from ehrsim.profiles import get_profile
from ehrsim.sender import Sender, SenderStats
from ehrsim.store import ResourceStore


class Facility:
    def __init__(self, config: FacilityConfig, *, clock: Clock, public_base_url: str) -> None:
        self.id = config.id
        self.config = config
        self.profile = get_profile(config.profile)
        self.store = ResourceStore(clock, RESOURCE_TYPES)
        self.auth = TokenIssuer(config.clients, config.token_lifetime_s, clock)
        self.sender = (
            Sender(config.id, config.webhook, f"{public_base_url.rstrip('/')}/{config.id}/fhir")
            if config.webhook is not None
            else None
        )
        self._generator = Generator(self.store, config.seed, config.id)
        # The chart that exists before the subscription starts: no notifications.
        self._generator.populate(config.patients)

    def activity(self, changes: int) -> None:
        """Perform ``changes`` seeded changes, each queued as a notification when there is a webhook."""
        for _ in range(changes):
            change = self._generator.step()
            if self.sender is not None:
                self.sender.enqueue(change)

    def truth(self) -> list[dict[str, Any]]:
        return [
            {
                "resourceType": r.resource_type,
                "id": r.id,
                "versionId": str(r.version),
                "lastUpdated": format_instant(r.last_updated),
                "deleted": r.deleted,
            }
            for r in self.store.records()
        ]

    def notification_stats(self) -> SenderStats:
        return self.sender.stats if self.sender is not None else SenderStats()

"""Faults of one facility, switchable at start (``faults:`` in the config) and at runtime
(``POST /_admin/{facility}/faults``).

``FaultConfig`` holds the standing faults; a POST merges the fields it names into them. One-shot
``actions`` (restart the event counters, expire or revoke every token, force subscriptions to
``error``/``off``, expire every paging session) happen once and are logged. Every effect a fault has
is counted in ``applied`` and every change of the switches is appended to ``log``, so that ground truth
still holds: a notification a fault suppressed is listed by ``/_admin/{facility}/notifications/dropped``
with its reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Action = Literal[
    "restart-counters",
    "expire-tokens",
    "revoke-tokens",
    "subscription-error",
    "subscription-off",
    "expire-paging-sessions",
]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Throttle(_Model):
    """A 429 storm: the next ``requests`` FHIR and token requests are answered 429."""

    requests: Annotated[int, Field(ge=0)] = 0
    retry_after_s: Annotated[int, Field(ge=0)] = 1
    http_date: bool = False  # Retry-After as an HTTP-date instead of delta-seconds


class ErrorBurst(_Model):
    """The next ``requests`` FHIR requests are answered with ``status`` (500, 502, 503, 504)."""

    requests: Annotated[int, Field(ge=0)] = 0
    status: Literal[500, 502, 503, 504] = 503


class MllpFaults(_Model):
    """Faults of the MLLP sender (``ehrsim.mllp``); a POST naming ``mllp`` replaces all of them."""

    drop_connection_rate: Fraction = 0.0  # the connection is closed halfway through writing a frame
    ack_lost_rate: Fraction = 0.0  # the ACK is ignored: the message is resent after ack_timeout_s
    duplicate_rate: Fraction = 0.0  # an acknowledged message is sent once more (same MSH-10)
    reorder_rate: Fraction = 0.0  # the next queued message is sent before this one
    split_rate: Fraction = 0.0  # the frame is written as three TCP segments
    link_down: bool = False  # the connection is closed and not reopened: messages queue until cleared


class FaultConfig(_Model):
    drop_rate: Fraction = 0.0  # notifications never sent (recorded as dropped, reason fault-drop)
    drop_next: Annotated[int, Field(ge=0)] = 0  # the next this many notifications never sent (a known gap)
    duplicate_rate: Fraction = 0.0  # notifications delivered twice
    delay_s: Annotated[float, Field(ge=0)] = 0.0  # notifications held this long before the first attempt
    reorder: bool = False  # with delay_s: each held a random time in [0, delay_s), so order is lost
    feed_stopped: bool = False  # nothing sent at all (events still numbered; recorded as dropped)
    throttle: Throttle = Throttle()
    error_burst: ErrorBurst = ErrorBurst()
    slow_s: Annotated[float, Field(ge=0, le=60)] = 0.0  # added latency of every FHIR response
    broken_resources: list[str] = []  # "Type/id": read and searches that include it answer 500
    bad_ndjson: list[str] = []  # "Type/id": its line in $export files is cut short (not JSON)
    bulk_job_error: bool = False  # $export status polls answer 500 with an OperationOutcome: the job failed
    # Reads are served by a replica this far behind: a read answers the version that was current then
    # (404 for a resource created since), so a read right after a change can return the older version.
    replica_lag_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    # The client's registration revoked (a key rotated out, an app deactivated): every token request
    # answers 401 ``invalid_client`` and every token issued before stops working, until set back.
    credentials_revoked: bool = False
    mllp: MllpFaults = MllpFaults()


class FaultUpdate(_Model):
    """Body of ``POST /_admin/{facility}/faults``: fields to change, and one-shot actions."""

    drop_rate: Fraction | None = None
    drop_next: Annotated[int, Field(ge=0)] | None = None
    duplicate_rate: Fraction | None = None
    delay_s: Annotated[float, Field(ge=0)] | None = None
    reorder: bool | None = None
    feed_stopped: bool | None = None
    throttle: Throttle | None = None
    error_burst: ErrorBurst | None = None
    slow_s: Annotated[float, Field(ge=0, le=60)] | None = None
    broken_resources: list[str] | None = None
    bad_ndjson: list[str] | None = None
    bulk_job_error: bool | None = None
    replica_lag_s: Annotated[float, Field(ge=0, le=3600)] | None = None
    credentials_revoked: bool | None = None
    mllp: MllpFaults | None = None
    actions: list[Action] = []
    reset: bool = False  # clear every standing fault first


@dataclass
class Faults:
    """The live fault state of one facility."""

    config: FaultConfig
    seed: int = 0
    applied: dict[str, int] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    _rng: random.Random = field(init=False)
    _throttle_left: int = field(init=False)
    _burst_left: int = field(init=False)
    _drop_left: int = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - fault sampling, not security
        self._arm()

    def update(self, update: FaultUpdate, now: float) -> None:
        base = FaultConfig() if update.reset else self.config
        changes = update.model_dump(exclude_none=True, exclude={"actions", "reset"})
        self.config = FaultConfig.model_validate({**base.model_dump(), **changes})
        if update.reset or changes.keys() & {"throttle", "error_burst", "drop_next"}:
            self._arm()
        self.log.append({"at": now, "set": changes, "reset": update.reset, "actions": list(update.actions)})

    def count(self, name: str) -> None:
        self.applied[name] = self.applied.get(name, 0) + 1

    def chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def drop(self) -> bool:
        """Whether the notification of an event is dropped: one of the next ``drop_next``, or by chance."""
        if self._drop_left > 0:
            self._drop_left -= 1
            return True
        return self.chance(self.config.drop_rate)

    def notification_delay(self) -> float:
        delay = self.config.delay_s
        return self._rng.uniform(0, delay) if self.config.reorder else delay

    def http_fault(self, now: float) -> tuple[int, dict[str, str]] | None:
        """The status and headers a FHIR or token request is answered with under a fault, if any."""
        if self._throttle_left > 0:
            self._throttle_left -= 1
            self.count("throttle")
            throttle = self.config.throttle
            retry_after = (
                formatdate(now + throttle.retry_after_s, usegmt=True)
                if throttle.http_date
                else str(throttle.retry_after_s)
            )
            return 429, {"Retry-After": retry_after}
        if self._burst_left > 0:
            self._burst_left -= 1
            self.count("error_burst")
            return self.config.error_burst.status, {}
        return None

    def state(self) -> dict[str, Any]:
        return {
            "faults": self.config.model_dump(),
            "remaining": {
                "throttle": self._throttle_left,
                "error_burst": self._burst_left,
                "drop_next": self._drop_left,
            },
            "applied": dict(self.applied),
            "log": self.log[-1000:],
        }

    def _arm(self) -> None:
        self._throttle_left = self.config.throttle.requests
        self._burst_left = self.config.error_burst.requests
        self._drop_left = self.config.drop_next

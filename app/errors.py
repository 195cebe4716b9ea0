"""The error tree. Transient versus permanent is a class distinction; every error carries a short
``reason`` slug used in logs, metrics and the dead-letter list, and a ``detail`` for humans that never
contains patient data.

    IngestError
    ├── ConfigurationError          facility or process misconfigured: fix the config, then replay
    ├── NotificationError           a notification we cannot accept (receiver answers 4xx)
    └── EHRError                    talking to a facility's EHR failed
        ├── TransientEHRError       retried: bounded tenacity retries, then back-off in Postgres
        │   ├── EHRTransportError   connect/read timeouts, resets, DNS
        │   ├── EHRRateLimited      429 (carries Retry-After)
        │   ├── EHRUnavailable      502 / 503 / 504
        │   └── EHRTokenExpired     401 invalid_token after one re-authentication
        └── PermanentEHRError       recorded with its reason and dead-lettered, never retried in a loop
            ├── EHRAuthRejected     the token endpoint refused our credentials (revoked, wrong key)
            ├── EHRRejected         400 / 403 / 422 and other 4xx refusals
            ├── ForeignHostError    a URL outside the facility's registered base (SSRF guard)
            └── UnparseableResource the EHR answered something that is not the FHIR resource we asked for

404 and 410 are not errors: they are deletions, stored as tombstones.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error this package raises on purpose."""

    reason: str = "error"

    def __init__(self, reason: str | None = None, detail: str = "") -> None:
        if reason is not None:
            self.reason = reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class ConfigurationError(IngestError):
    reason = "configuration"


class NotificationError(IngestError):
    reason = "bad_notification"


class EHRError(IngestError):
    reason = "ehr_error"


class TransientEHRError(EHRError):
    reason = "ehr_transient"


class EHRTransportError(TransientEHRError):
    reason = "ehr_transport"


class EHRRateLimited(TransientEHRError):
    reason = "ehr_rate_limited"

    def __init__(self, reason: str | None = None, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class EHRUnavailable(TransientEHRError):
    reason = "ehr_unavailable"


class EHRTokenExpired(TransientEHRError):
    reason = "ehr_token_expired"


class PermanentEHRError(EHRError):
    reason = "ehr_permanent"


class EHRAuthRejected(PermanentEHRError):
    reason = "ehr_auth_rejected"


class EHRRejected(PermanentEHRError):
    reason = "ehr_rejected"


class ForeignHostError(PermanentEHRError):
    reason = "foreign_host"


class UnparseableResource(PermanentEHRError):
    reason = "unparseable_resource"

"""The error tree. One class per condition; its ``reason`` slug is a class constant, used in logs, metrics,
the dead-letter list and (later) alert keys, so the slugs are exact and listed here and nowhere else
(``reasons()``; README's dead-letter reasons are checked against it). ``detail`` is for humans and never
contains patient data.

How the drain treats a failure is a class distinction:

- **transient** (``TransientEHRError``): retried briefly inside the HTTP client (tenacity), then backed
  off in Postgres (``next_attempt_at``) up to ``max_attempts``, then dead-lettered.
- **deferred** (``ConfigurationError``, ``InternalError``): never retried in-process (retrying cannot
  help until a human or a restart changes something); backed off in Postgres with the same bounded
  budget, then dead-lettered, so a secret mounted late heals by itself and nothing spins.
- **permanent** (``PermanentEHRError``, ``ForeignHostError``): dead-lettered at once with
  the reason; ``ehr-ingest dead-letters replay`` once the cause is fixed.

::

    IngestError
    ├── ConfigurationError                  configuration            deferred
    │   ├── SecretMissing                   secret_missing
    │   ├── SecretInvalid                   secret_invalid
    │   ├── ConfigUnreadable                config_unreadable
    │   └── ConfigInvalid                   config_invalid
    ├── InternalError                       internal_error           deferred (a bug, the database gone)
    ├── NotificationError                   (receiver's own reasons) answered 4xx / quarantined
    │   └── Unstorable                      unstorable               Postgres refused it, alone: quarantined
    ├── MessageRejected                     (MLLP listener's reasons) answered AR / quarantined
    ├── AdtNoPatient                        adt_no_mrn               permanent (PID-3 has no MRN of ours)
    ├── ForeignHostError                    foreign_host             permanent (SSRF guard: no connection)
    ├── NeedsBackfill                       needs_backfill           old dead letters only (now: a reconcile)
    ├── AlertSinkError                      (a sink's reasons)       on alert deliveries, never on inbox rows
    │   ├── SinkUnavailable                 sink_transport, sink_rate_limited, sink_unavailable: retried
    │   └── SinkRefused                     sink_rejected, sink_unconfigured: the delivery fails at once
    └── EHRError
        ├── TransientEHRError
        │   ├── EHRTransportError           ehr_transport            connect/read timeouts, resets, DNS
        │   ├── EHRUnavailable              ehr_unavailable          502 / 503 / 504 (Retry-After kept)
        │   ├── EHRServerError              ehr_server_error         500 the vendor's adapter calls transient
        │   ├── EHRRateLimited              ehr_rate_limited         429 (a 503 is EHRUnavailable)
        │   │   └── TokenEndpointThrottled  token_rate_limited
        │   ├── PolitenessThrottled         politeness_wait          our own limit (not the EHR's)
        │   │   ├── FacilityPaused          facility_paused          a Retry-After longer than we hold
        │   │   ├── ConcurrencyCapped       concurrency_cap          no request slot free
    │   │   └── YieldedToLive           yielded_to_live          a background read kept behind live fetches
        │   ├── EHRTokenExpired             ehr_token_expired        401 after one re-authentication
        │   ├── TokenEndpointUnavailable    token_unavailable        token endpoint 5xx
        │   ├── TokenEndpointFlaky          token_flaky_400          Epic's occasional bare 400
        │   ├── SmartConfigUnavailable      smart_config_unavailable
        │   ├── PagingSessionExpired        paging_session_expired   paging kept expiring (Epic 4113)
        │   ├── IdentifierNotFound          identifier_not_found     search found nothing (index lag)
        │   ├── NotFoundUnconfirmed         not_found_unconfirmed    a 404 not yet a deletion: read again
        │   ├── RevivalUnverified           revival_unverified       a payload over a tombstone: read first
    │   ├── OlderThanNotified           older_than_notified      a read older than notified: read again
        │   ├── BulkExportBusy              bulk_export_busy         a $export of the facility already runs
        │   ├── BulkExportTimeout           bulk_export_timeout      a $export not complete in time: cancelled
        │   └── BulkExportPending           bulk_export_pending      not complete by the run's budget: kept
        └── PermanentEHRError
            ├── EHRAuthRejected             ehr_auth_rejected        revoked credentials, wrong key
            │   ├── SmartConfigInvalid      smart_config_invalid
            │   ├── TokenEndpointUntrusted  token_endpoint_untrusted
            │   └── TokenResponseInvalid    token_response_invalid
            ├── EHRRejected                 ehr_http_4xx             another 4xx (the status is in detail)
            │   ├── EHRBadRequest           ehr_http_400
            │   ├── SearchTooBroad          search_too_broad         matches too much (4127): narrow it
            │   ├── EHRForbidden            ehr_http_403
            │   └── EHRUnprocessable        ehr_http_422
            ├── EHRServerErrorPermanent     ehr_server_error_permanent  500 the adapter calls permanent
            ├── PagingLoop                  paging_loop
            ├── TooManyRedirects            too_many_redirects
            ├── UnparseableResource         unparseable_resource     not the FHIR resource we asked for
            ├── BulkExportFailed            bulk_export_failed       the server failed or refused a $export
            ├── BulkExportGone              bulk_export_gone         a kept $export the server no longer knows
            ├── GroupNotFound               group_not_found          the cohort Group reads or exports 404/410
            └── BulkLineUnparseable         bulk_line_unparseable    an ndjson line: quarantined, file goes on

A 410 is a deletion, stored as a tombstone. A 404 becomes one only once confirmed (read again after a
back-off, announced as a delete, or a vendor whose adapter says its 404 is final): until then it is
``NotFoundUnconfirmed``, since replication lag and access filtering answer 404 too.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args


class IngestError(Exception):
    """Base of every error this package raises on purpose."""

    reason: str = "error"
    #: a branch of the tree, never raised itself, so its slug is never seen on a row; read from each
    #: class's own namespace (``reasons()``), so a subclass of a branch is not one unless it says so
    abstract: ClassVar[bool] = True
    #: dead-lettered at once; otherwise backed off in Postgres up to the attempt budget
    permanent: ClassVar[bool] = False
    #: seconds the EHR (or our own limit) asked us to wait, when known
    retry_after: float | None = None

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class ConfigurationError(IngestError):
    reason = "configuration"
    abstract = True


class SecretMissing(ConfigurationError):
    reason = "secret_missing"


class SecretInvalid(ConfigurationError):
    reason = "secret_invalid"


class ConfigUnreadable(ConfigurationError):
    reason = "config_unreadable"


class ConfigInvalid(ConfigurationError):
    reason = "config_invalid"


class InternalError(IngestError):
    reason = "internal_error"


#: Why the receiver refused (400) or quarantined (202) a body: its answers' codes and the ``reason`` of a
#: quarantined body. Not dead-letter reasons; README lists them from here (tests/test_reasons.py).
NotificationReason = Literal[
    "not_a_notification",
    "not_a_bundle",
    "no_status_entry",
    "unknown_notification_type",
    "bad_reference",
    "path_mismatch",
    "unexpected_shape",
    "unstorable",
]


class NotificationError(IngestError):
    """A notification we cannot accept; each raise names one of the receiver's ``NotificationReason``."""

    reason = "bad_notification"
    abstract = True
    permanent = True

    def __init__(self, reason: NotificationReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(detail)


class Unstorable(NotificationError):
    """Postgres refused a value of one notification even in a transaction of its own: retrying the
    same body cannot help, so the receiver keeps it in quarantine (and answers 2xx)."""

    def __init__(self, detail: str) -> None:
        super().__init__("unstorable", detail)


#: Why the MLLP listener answered ``AR`` (kept in ``adt_quarantine``): MSA-3 and ERR carry the slug.
#: README lists them from here (tests/test_reasons.py).
AdtRejectReason = Literal[
    "unparseable_msh",
    "unknown_facility",
    "peer_not_allowed_for_facility",
    "unsupported_message_type",
    "message_too_large",
]


class MessageRejected(IngestError):
    """An HL7 v2 message the listener refuses (``AR``); each raise names one ``AdtRejectReason``."""

    reason = "bad_message"
    abstract = True
    permanent = True

    def __init__(self, reason: AdtRejectReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(detail)


class AdtNoPatient(IngestError):
    """An ADT message whose PID-3 has no identifier of the facility's MRN assigning authority: there is
    no patient to resolve over FHIR (the message stays in ``adt_events``)."""

    reason = "adt_no_mrn"
    permanent = True


class ForeignHostError(IngestError):
    """A URL outside the facility's registered base: refused before any connection (DESIGN rule 5)."""

    reason = "foreign_host"
    permanent = True


class NeedsBackfill(IngestError):
    """A notification that names no resource. No longer raised: the drain requests a reconcile of the
    facility instead (``app.reconcile.requests``); kept so that dead letters of earlier versions are still
    listed with their reason and replayed (which now requests that reconcile)."""

    reason = "needs_backfill"
    permanent = True


#: Why an alert sink did not take a delivery (``alert_deliveries.last_error``, the ``sink_failing`` alert).
SinkFailureReason = Literal[
    "sink_transport",  # no connection, a reset or a timeout
    "sink_rate_limited",  # 429
    "sink_unavailable",  # 5xx
    "sink_rejected",  # another 4xx: the sink refuses the event or our credentials
    "sink_unconfigured",  # the sink is in no configuration any more
]


class AlertSinkError(IngestError):
    """An alert sink did not take a delivery; each raise names one ``SinkFailureReason``. Delivery
    outcomes, not ingest failures: they never reach an inbox row."""

    reason = "sink_error"
    abstract = True

    def __init__(self, reason: SinkFailureReason, detail: str = "") -> None:
        self.reason = reason
        super().__init__(detail)


class SinkUnavailable(AlertSinkError):
    """Worth another send later (back-off in Postgres, bounded)."""


class SinkRefused(AlertSinkError):
    """Sending the same event again cannot help: the delivery fails at once and the sink is reported."""

    permanent = True


class EHRError(IngestError):
    reason = "ehr_error"
    abstract = True


class TransientEHRError(EHRError):
    reason = "ehr_transient"
    abstract = True


class EHRTransportError(TransientEHRError):
    reason = "ehr_transport"


class EHRUnavailable(TransientEHRError):
    reason = "ehr_unavailable"

    def __init__(self, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class EHRServerError(TransientEHRError):
    reason = "ehr_server_error"


class EHRRateLimited(TransientEHRError):
    """The EHR asked us to slow down; ``retry_after`` in seconds when it said how long."""

    reason = "ehr_rate_limited"

    def __init__(self, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TokenEndpointThrottled(EHRRateLimited):
    reason = "token_rate_limited"


class PolitenessThrottled(TransientEHRError):
    """Our own per-facility limit made the request wait longer than a worker holds it."""

    reason = "politeness_wait"
    abstract = True

    def __init__(self, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class FacilityPaused(PolitenessThrottled):
    reason = "facility_paused"


class ConcurrencyCapped(PolitenessThrottled):
    reason = "concurrency_cap"


class YieldedToLive(PolitenessThrottled):
    """A reconcile or backfill read waited its longest behind the facility's notification fetches (which
    always go first): the reconcile stops there and continues on its next run."""

    reason = "yielded_to_live"


class EHRTokenExpired(TransientEHRError):
    reason = "ehr_token_expired"


class TokenEndpointUnavailable(TransientEHRError):
    reason = "token_unavailable"


class TokenEndpointFlaky(TransientEHRError):
    reason = "token_flaky_400"


class SmartConfigUnavailable(TransientEHRError):
    reason = "smart_config_unavailable"


class PagingSessionExpired(TransientEHRError):
    """The server forgot a search between two of its pages (Epic 4113, HAPI 410), and re-issuing the query
    did not get through it either: worth another try later, never a reason to give the rows up."""

    reason = "paging_session_expired"


class IdentifierNotFound(TransientEHRError):
    """An identifier-only focus found nothing yet: the EHR's search index may lag its writes."""

    reason = "identifier_not_found"


class NotFoundUnconfirmed(TransientEHRError):
    """A 404 for a focus no delete was announced for: the row is read again after its back-off, and a
    second 404 is the deletion (``deletion = not_found_confirmed``)."""

    reason = "not_found_unconfirmed"


class RevivalUnverified(TransientEHRError):
    """A payload that would make a tombstoned resource live again: the row is read again (a read, not a
    payload, decides whether the resource exists)."""

    reason = "revival_unverified"


class OlderThanNotified(TransientEHRError):
    """A read answered a version older than the one the notification announced (a lagging replica): the
    row keeps the notified version and time and is read again after its back-off, so the newer version
    is not missed; after ``max_attempts`` it is dead-lettered with this reason."""

    reason = "older_than_notified"


class BulkExportBusy(TransientEHRError):
    """A Bulk Data export of the facility is already running: ours (the per-facility lock) or, past the
    wait we allow, one the server says is in progress (429 on kick-off)."""

    reason = "bulk_export_busy"

    def __init__(self, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BulkExportTimeout(TransientEHRError):
    """A Bulk Data export did not complete within the time we give it: cancelled at the server (DELETE
    on its status URL), to be kicked off again on the next run."""

    reason = "bulk_export_timeout"


class BulkExportPending(TransientEHRError):
    """A Bulk Data export still running when the run's time budget ends: kept at the server (its status
    URL in ``reconcile_bulk_jobs``) and polled again by the next run instead of a new kick-off."""

    reason = "bulk_export_pending"

    def __init__(self, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after  # the wait the server asked before the next poll


class PermanentEHRError(EHRError):
    reason = "ehr_permanent"
    abstract = True
    permanent = True


class EHRAuthRejected(PermanentEHRError):
    reason = "ehr_auth_rejected"


class SmartConfigInvalid(EHRAuthRejected):
    reason = "smart_config_invalid"


class TokenEndpointUntrusted(EHRAuthRejected):
    reason = "token_endpoint_untrusted"


class TokenResponseInvalid(EHRAuthRejected):
    reason = "token_response_invalid"


class EHRRejected(PermanentEHRError):
    """A 4xx refusal; ``status`` is the HTTP status."""

    reason = "ehr_http_4xx"

    def __init__(self, detail: str = "", status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class EHRBadRequest(EHRRejected):
    reason = "ehr_http_400"


class SearchTooBroad(EHRRejected):
    """A search refused because it matches too much (issue code ``too-costly``; Epic's Patient search
    past 100 matches, 4127): ask narrower criteria."""

    reason = "search_too_broad"


class EHRForbidden(EHRRejected):
    reason = "ehr_http_403"


class EHRUnprocessable(EHRRejected):
    reason = "ehr_http_422"


class EHRServerErrorPermanent(PermanentEHRError):
    reason = "ehr_server_error_permanent"


class PagingLoop(PermanentEHRError):
    reason = "paging_loop"


class TooManyRedirects(PermanentEHRError):
    reason = "too_many_redirects"


class UnparseableResource(PermanentEHRError):
    reason = "unparseable_resource"


class BulkExportFailed(PermanentEHRError):
    """The server refused the kick-off (4xx), reported the job failed, or answered a manifest we cannot
    read; the job is cancelled."""

    reason = "bulk_export_failed"


class BulkExportGone(PermanentEHRError):
    """A kept Bulk Data export (resumed from an earlier run) that the server no longer knows (404/410 on
    its status URL or a file: expired, or cancelled): dropped, and a new one kicked off."""

    reason = "bulk_export_gone"


class GroupNotFound(PermanentEHRError):
    """The facility's cohort Group (``reconcile.group``) reads 404/410: its members are not refreshed (the
    last good read's stay in the cohort); or its ``$export`` kick-off does (that type's run fails, its
    watermark kept)."""

    reason = "group_not_found"


class BulkLineUnparseable(PermanentEHRError):
    """One ndjson line of an export that is no FHIR resource (bad JSON, no resourceType/id, too long):
    kept in quarantine with its file and line number; the rest of the file is read on. Never raised out of
    an export: it names the quarantine rows."""

    reason = "bulk_line_unparseable"


_REJECTED_BY_STATUS: dict[int, type[EHRRejected]] = {
    400: EHRBadRequest,
    403: EHRForbidden,
    422: EHRUnprocessable,
}


def rejected(status: int) -> EHRRejected:
    """The error for a 4xx answer that is neither a deletion nor an authentication retry."""
    return _REJECTED_BY_STATUS.get(status, EHRRejected)(f"{status} from EHR", status=status)


def _tree(cls: type[IngestError]) -> list[type[IngestError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_tree(sub))
    return found


def reasons() -> dict[str, type[IngestError]]:
    """Every reason slug a failure can carry (on an inbox row, in a log line or a metric), with its
    class. Raises if two classes share a slug: alerts key on them."""
    found: dict[str, type[IngestError]] = {}
    for cls in _tree(IngestError):
        slug = cls.__dict__.get("reason")
        if not isinstance(slug, str) or cls.__dict__.get("abstract", False):
            continue
        if slug in found and found[slug] is not cls:
            raise AssertionError(f"reason {slug} is used by {found[slug].__name__} and {cls.__name__}")
        found[slug] = cls
    return found


def handling(cls: type[IngestError]) -> str:
    """``transient``, ``deferred`` or ``permanent``: what the drain does with a row that failed so."""
    if cls.permanent:
        return "permanent"
    return "transient" if issubclass(cls, TransientEHRError) else "deferred"


def notification_reasons() -> tuple[NotificationReason, ...]:
    """Every reason the receiver can refuse or quarantine a body with."""
    return get_args(NotificationReason)


def sink_failure_reasons() -> tuple[SinkFailureReason, ...]:
    """Every reason an alert sink can refuse a delivery with."""
    return get_args(SinkFailureReason)


def adt_reject_reasons() -> tuple[AdtRejectReason, ...]:
    """Every reason the MLLP listener can answer ``AR`` with."""
    return get_args(AdtRejectReason)

"""The vendor adapter interface and the default adapter every vendor adapter builds on.

An adapter is where a vendor's quirks live (STYLE.md: no ``if vendor == ...`` in the pipeline). Most of
EHR-FACTS §7 is handled for every vendor by the default, because the rules are harmless where a quirk is
absent (trimming identifiers, comparing names by value, skipping outcome entries); a subclass changes
data attributes, or overrides a method for a quirk that would be wrong elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from app.errors import EHRServerError, EHRServerErrorPermanent, IngestError
from app.fhir.normalize import Normalized, SummaryOptions, normalize_resource, pair_blood_pressure
from app.fhir.normalize.names import ISO21090_PREFERRED
from app.fhir.notifications import Announcement, EventIdentity, NotificationShape
from app.fhir.outcomes import outcome_detail_codes, outcome_issue_codes
from app.reconcile import StrategyName
from app.reconcile.facts import DEFAULT_TYPES, SearchFacts


class VendorAdapter(Protocol):
    @property
    def vendor(self) -> str: ...

    @property
    def default_change_detection(self) -> StrategyName:
        """The change-detection strategy this vendor allows when nothing else is known (DESIGN.md table);
        a facility's probed capabilities and its YAML may choose another per resource type."""
        ...

    @property
    def search_facts(self) -> SearchFacts:
        """What this vendor's search API lets the reconciler ask (parameter spellings, precision, limits)."""
        ...

    @property
    def reconcile_types(self) -> tuple[str, ...]:
        """The resource types reconciled when a facility's YAML names none."""
        ...

    @property
    def event_identity(self) -> EventIdentity:
        """How this vendor's notification events are told apart: ``number`` (the IGs' event numbers) or
        ``event-id`` (``notificationEvent.id``, for senders whose numbers are useless for identity). A
        facility's ``webhook.event_identity`` overrides it."""
        ...

    def announcement(self, headers: Mapping[str, str]) -> Announcement | None:
        """What this vendor's own notification headers (lower-cased names) say about a bare-resource
        delivery, or None when the delivery carries none: then the body alone tells its shape. Never
        raises on a malformed header value (it is ignored)."""
        ...

    def normalize(self, resource: dict[str, Any], *, now: datetime) -> Normalized:
        """The resource to store, its view summary, validation issues and references to fetch. Pure and
        lenient: never raises on content, never drops data."""
        ...

    def search_entries(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """The resources of a searchset Bundle, without ``search.mode=outcome`` entries and
        OperationOutcomes; never raises on a malformed Bundle."""
        ...

    def supports_batch_read(self) -> bool:
        """Whether ``{Type}?_id=a,b,c`` may be used to read several resources at once."""
        ...

    def batch_read_max(self) -> int:
        """How many ids one ``_id`` search may carry (1 when batch reads are not supported)."""
        ...

    def pair_blood_pressure(self, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Blood pressure readings (``app.fhir.normalize.blood_pressure``) from panels and split halves."""
        ...

    def server_error(self, status: int, body: Any) -> IngestError:
        """The error for a 5xx other than 502/503/504, from its status and parsed body (an
        OperationOutcome, anything else, or None): transient (retried, then backed off) or permanent."""
        ...

    @property
    def not_found_is_final(self) -> bool:
        """Whether a 404 on a read is a deletion at once. False: it is read again after a back-off first
        (a replica lagging its primary, or access filtering, answers 404 for a live resource)."""
        ...

    @property
    def notified_time_slack(self) -> timedelta:
        """How far a read's ``meta.lastUpdated`` may fall before the time a notification event announced
        and still be the announced version. Zero where the event's time is its version's time (the IG's
        "the instant this event occurred"; ehrsim); more for a sender that stamps events when it sends
        them. A read older than that is a lagging replica's: the row is read again."""
        ...

    @property
    def notification_shapes(self) -> frozenset[NotificationShape]:
        """The notification shapes this vendor sends; a delivery in any other shape is refused by the
        receiver (kept in quarantine when it has a body)."""
        ...

    def paging_session_expired(self, status: int, body: Any) -> bool:
        """Whether this 4xx answer to a ``next`` link (status, parsed body or None) says the server
        forgot the search, so that the query is issued again from its first page."""
        ...


class DefaultAdapter:
    """Standard FHIR R4 behaviour; also the adapter of an unknown vendor.

    ``mrn_system`` is the facility's MRN identifier system (per-customer OIDs at Epic). ``batch_read``
    overrides the class default for a facility whose server was verified to differ.
    """

    vendor: str = "generic"
    default_change_detection: StrategyName = "last-updated"
    search_facts: SearchFacts = SearchFacts()
    reconcile_types: tuple[str, ...] = DEFAULT_TYPES
    event_identity: EventIdentity = "number"
    not_found_is_final: bool = False
    notified_time_slack: timedelta = timedelta(0)
    # Standard FHIR: the Subscriptions Backport, R4B and R5 notification Bundles, a legacy R4 rest-hook's
    # bare resource or empty POST. Not another server's own formats (payload mode, announcing headers).
    notification_shapes: frozenset[NotificationShape] = frozenset(
        {"backport", "backport-0.1", "r4b", "r5", "resource", "empty"}
    )
    batch_read: bool = True
    # Bounded by URL length: 100 ids of up to 64 characters stay under the 8 KB most servers accept.
    batch_max: int = 100
    preferred_name_extensions: tuple[str, ...] = (ISO21090_PREFERRED,)

    def __init__(
        self,
        *,
        mrn_system: str | None = None,
        batch_read: bool | None = None,
        preferred_name_extensions: tuple[str, ...] | None = None,
    ) -> None:
        if batch_read is not None:
            self.batch_read = batch_read
        if preferred_name_extensions is not None:
            self.preferred_name_extensions = preferred_name_extensions
        self.options = SummaryOptions(
            mrn_system=mrn_system, preferred_name_extensions=self.preferred_name_extensions
        )

    def announcement(self, headers: Mapping[str, str]) -> Announcement | None:
        return None

    def normalize(self, resource: dict[str, Any], *, now: datetime) -> Normalized:
        return normalize_resource(resource, now=now, options=self.options)

    def search_entries(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        found: list[dict[str, Any]] = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            search = entry.get("search")
            if isinstance(search, dict) and search.get("mode") == "outcome":
                continue
            resource = entry.get("resource")
            if not isinstance(resource, dict) or resource.get("resourceType") == "OperationOutcome":
                continue
            found.append(resource)
        return found

    def supports_batch_read(self) -> bool:
        return self.batch_read

    def batch_read_max(self) -> int:
        return self.batch_max if self.batch_read else 1

    def pair_blood_pressure(self, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return pair_blood_pressure(observations)

    #: Whether an OperationOutcome can make a 500 permanent (a vendor known to answer 500 for refusals).
    server_error_outcome_is_final: bool = False

    def server_error(self, status: int, body: Any) -> IngestError:
        codes = outcome_issue_codes(body)
        if self.server_error_outcome_is_final and codes and not codes & TRANSIENT_ISSUE_CODES:
            return EHRServerErrorPermanent(f"{status} from EHR, issue {'/'.join(sorted(codes))}")
        return EHRServerError(f"{status} from EHR")

    #: Vendor codes (``issue.details.coding.code``) that say a paging session expired.
    paging_expired_codes: frozenset[str] = frozenset()
    #: Statuses that, answering a ``next`` link, alone say the search is gone.
    paging_expired_statuses: frozenset[int] = frozenset()

    def paging_session_expired(self, status: int, body: Any) -> bool:
        if status in self.paging_expired_statuses:
            return True
        return bool(self.paging_expired_codes & outcome_detail_codes(body))


#: OperationOutcome issue codes (FHIR R4 IssueType) that say trying again may work.
TRANSIENT_ISSUE_CODES = frozenset(
    {"transient", "lock-error", "no-store", "exception", "timeout", "throttled"}
)

"""Vendor profiles: the behaviour that differs between simulated EHRs (see EHR-FACTS.md).

A facility names its profile in the config. A profile is data: the server, the generator, the auth and
the sender read its fields; there are no ``if profile.name == ...`` branches elsewhere. Durations are
the vendor's real ones; a facility's ``time_scale`` shrinks them for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

NotificationStyle = Literal["backport-r4", "r4b", "r5", "medplum", "hapi"]
"""How the sender shapes a notification (EHR-FACTS §2):

- ``backport-r4``: ``history`` Bundle whose first entry is a backport ``Parameters`` status;
- ``r4b``: ``history`` Bundle with a ``SubscriptionStatus``, bundle-relative event numbers, each event
  with its own ``id`` and the body signed ``X-Hub-Signature: sha256=<hex>`` (athenahealth);
- ``r5``: ``subscription-notification`` Bundle with a ``SubscriptionStatus``;
- ``medplum``: the bare resource, ``X-Signature`` and ``X-Medplum-*`` headers, ``{}`` for a delete;
- ``hapi``: empty POST (no payload), ``PUT``/``DELETE {endpoint}/{Type}/{id}`` (with a payload).
"""
Paging = Literal["token", "page-context", "getpages", "cursor", "continue", "session"]
"""Shape of the ``next`` link: ``{type}?_page_token=`` (generic), ``{type}?-pageContext=`` (Oracle),
``{base}?_getpages={search id}&_getpagesoffset=`` without a type, the search held by the server
(HAPI), ``{type}?cursor=`` (athena), ``{type}?continue=``
(MEDITECH), ``{type}?session=`` that expires (Epic, error 4113)."""
LastUpdatedScope = Literal["system", "patient", "types", "none"]
"""Where ``_lastUpdated`` is a search parameter: on every type (HAPI, Medplum), on clinical types together
with ``patient`` (Oracle, athena; Patient and Medication only when listed in ``last_updated_types``), only
on ``last_updated_types`` (Epic), nowhere (MEDITECH)."""
ErrorCodes = Literal["fhir", "epic"]
"""How search refusals are coded: FHIR issue codes only, or Epic's numeric codes (4111, 4112, 4113,
4127) in ``issue.details.coding``."""
ExportLevel = Literal["system", "patient", "group"]
HistoryLevel = Literal["type", "instance"]
"""``{type}/_history?_since=`` (every version and deletion of a type since an instant) and
``{type}/{id}/_history`` (one resource's versions)."""
SubscriptionOperation = Literal["status", "events"]
AuthMethod = Literal["private_key_jwt", "client_secret_basic", "client_secret_post"]
BloodPressure = Literal["panel", "split", "mixed"]
MedicationShape = Literal["reference", "codeable-concept", "contained"]
ObservationKind = Literal["vital", "blood-pressure", "lab"]
NameStyle = Literal["official", "official-and-usual", "usual-given", "nickname"]

BASE_TYPES = ("Patient", "Observation", "Condition")
CLINICAL_TYPES = (
    *BASE_TYPES,
    "Encounter",
    "MedicationRequest",
    "Medication",
    "AllergyIntolerance",
    "DocumentReference",
)

RICH_OBSERVATIONS: tuple[ObservationKind, ...] = ("vital", "blood-pressure", "lab")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long the sender keeps trying one notification before dropping it."""

    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    window_s: float | None = None  # give up once this long after the first attempt (None: no bound)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    resource_types: tuple[str, ...] = BASE_TYPES
    # -- search and read --------------------------------------------------------------------------
    last_updated: LastUpdatedScope = "system"  # where ``_lastUpdated`` is a search parameter
    last_updated_types: frozenset[str] = frozenset()  # with ``types``: the only types that have it
    last_updated_day_precision: bool = False  # values finer than a day are refused
    last_updated_param: str = "_lastUpdated"  # its spelling (parameter names are case-sensitive)
    last_updated_with_dates: bool = True  # may be combined with ``date``-like parameters (Oracle: no)
    paging: Paging = "token"
    default_count: int = 50  # page size without ``_count``
    max_count: int = 1000
    patient_required: bool = (
        False  # clinical searches need one ``patient`` (or ``_id``): Epic, Oracle, athena
    )
    patient_search_max: int | None = None  # a Patient search matching more is refused (Epic 4127 at 100)
    error_codes: ErrorCodes = "fhir"
    outcome_entries: bool = False  # OperationOutcome entries with ``search.mode=outcome`` (Epic)
    page_session_s: float | None = None  # paging sessions expire (Epic 4113, HAPI 410)
    minor_edit_rate: float = (
        0.0  # updates that are not clinically significant: ``_lastUpdated`` stays (Oracle)
    )
    meta: bool = True  # resources carry ``meta.versionId`` / ``meta.lastUpdated``
    uuid_version_ids: bool = False  # ``meta.versionId`` is a UUID (Medplum)
    history: frozenset[HistoryLevel] = (
        frozenset()
    )  # ``_history`` served: HAPI type+instance, Medplum instance
    padded_identifiers: bool = False  # identifier values padded with spaces (Epic)
    # The MRN's system (``{facility}`` is replaced by the facility id; Epic: a per-customer OID) and how it
    # is typed: v2-0203 ``MR``, or only by ``type.text`` (Epic: "EPI"), so consumers must know the system.
    mrn_system: str = "http://ehrsim.example.org/{facility}/mrn"
    mrn_type_text: str | None = None
    id_template: str = "{prefix}-{n}"  # resource ids; athena's look like ``a-1.pat-7`` (practice-scoped)
    # -- data shapes ------------------------------------------------------------------------------
    observations: tuple[ObservationKind, ...] = ("vital",)  # what new Observations are
    blood_pressure: BloodPressure = "panel"
    name_style: NameStyle = "official"
    medication: tuple[MedicationShape, ...] = ("codeable-concept",)
    lab_ucum: bool = True  # lab quantities carry a UCUM system and code
    # -- subscriptions ----------------------------------------------------------------------------
    notification: NotificationStyle | None = "backport-r4"  # None: no Subscription support
    subscription_operations: frozenset[SubscriptionOperation] = frozenset({"status", "events"})
    # Events whose focus is an identifier only (athena's proprietary resources): of these types, about
    # this share of creates and updates (chosen by a hash of the change, so reproducibly).
    identifier_focus_types: frozenset[str] = frozenset()
    identifier_focus_share: float = 0.0
    payloads: tuple[str, ...] = ("id-only", "full-resource", "empty")
    handshake: bool = True
    heartbeat_min_s: float = 10.0  # a requested heartbeat period is raised to at least this
    events_retention: int = 1000  # ``$events`` answers only for the most recent events
    delivery_timeout_s: float = 10.0  # a receiver slower than this fails the attempt (athena: 2 s)
    one_subscription_per_topic: bool = False  # a second subscription to a topic is refused (athena)
    error_after_drops: int | None = 10  # consecutive dropped notifications that put a subscription in error
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(5, 0.2, 5.0))
    # -- auth ---------------------------------------------------------------------------------------
    auth_methods: frozenset[AuthMethod] = frozenset({"private_key_jwt"})
    token_lifetime_s: int = 300
    token_requests_per_min: int | None = None  # token endpoint rate limit, then 429
    token_flaky_400_rate: float = 0.0  # fraction of token requests answered with a bare 400 (Epic)
    ratelimit_header: bool = (
        False  # a 429 also carries ``RateLimit: limit=…, remaining=0, reset=…`` (Medplum)
    )
    # -- metadata -------------------------------------------------------------------------------------
    software_name: str = "ehrsim"  # CapabilityStatement.software.name
    # -- bulk data ------------------------------------------------------------------------------------
    bulk_export: bool = False
    export_levels: frozenset[ExportLevel] = frozenset({"system", "patient", "group"})
    bulk_retry_after_s: int = 2  # Retry-After on a bulk status poll
    bulk_polls_until_done: int = 1  # status polls answered 202 before the manifest
    # The manifest lists what was deleted since ``_since`` (``deleted``: Bundles of DELETE requests). The
    # IG makes it optional; whether MEDITECH and Oracle fill it is unverified: off there (configurable).
    bulk_deleted: bool = False
    # ``GET Group/{id}`` and ``GET Group`` (the cohorts a group-level export names). The Bulk Data IG says
    # a server with group-level export SHOULD serve them; whether Epic, Oracle and MEDITECH let a backend
    # client read their Groups is unverified (EHR-FACTS lists only their $export): off there
    # (profile_overrides to change); on for the servers that hold Group as any other resource.
    group_read: bool = False
    bulk_file_resources: int = 0  # at most this many resources per file, a type split over several (0: one)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(name="generic", bulk_export=True, bulk_deleted=True, group_read=True),
        Profile(
            name="epic",
            resource_types=CLINICAL_TYPES,
            observations=RICH_OBSERVATIONS,
            last_updated="types",
            last_updated_types=frozenset({"DocumentReference"}),
            last_updated_param="_lastupdated",  # as the issue reports Epic spelling it (configurable)
            paging="session",
            max_count=100,
            patient_required=True,
            patient_search_max=100,
            error_codes="epic",
            outcome_entries=True,
            page_session_s=600.0,
            meta=False,
            padded_identifiers=True,
            mrn_system="urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14",
            mrn_type_text="EPI",
            blood_pressure="panel",
            name_style="official-and-usual",
            medication=("reference",),
            lab_ucum=False,
            notification=None,
            token_lifetime_s=3600,
            token_flaky_400_rate=0.02,
            software_name="Epic",
        ),
        Profile(
            name="oracle",
            resource_types=CLINICAL_TYPES,
            observations=RICH_OBSERVATIONS,
            last_updated="patient",
            paging="page-context",
            max_count=200,
            patient_required=True,
            last_updated_with_dates=False,
            minor_edit_rate=0.3,
            blood_pressure="mixed",
            name_style="usual-given",
            medication=("codeable-concept", "contained"),
            notification=None,
            auth_methods=frozenset({"private_key_jwt", "client_secret_basic"}),
            token_lifetime_s=570,
            bulk_export=True,
            export_levels=frozenset({"group"}),
            bulk_retry_after_s=600,
            software_name="Oracle Health Millennium",
        ),
        Profile(
            name="athena",
            resource_types=CLINICAL_TYPES,
            observations=RICH_OBSERVATIONS,
            last_updated="patient",
            last_updated_day_precision=True,
            paging="cursor",
            patient_required=True,
            id_template="a-1.{prefix}-{n}",
            name_style="nickname",
            notification="r4b",
            # Whether athena answers $status / $events is unverified: off (profile_overrides to change).
            subscription_operations=frozenset(),
            identifier_focus_types=frozenset({"Patient"}),
            identifier_focus_share=0.3,
            one_subscription_per_topic=True,
            delivery_timeout_s=2.0,
            payloads=("id-only",),
            retry=RetryPolicy(max_attempts=1000, backoff_initial_s=5.0, backoff_max_s=300.0, window_s=3600.0),
            auth_methods=frozenset({"private_key_jwt", "client_secret_basic"}),
            token_lifetime_s=3600,
            token_requests_per_min=50,
            software_name="athenaOne",
        ),
        Profile(
            name="meditech",
            resource_types=CLINICAL_TYPES,
            observations=RICH_OBSERVATIONS,
            last_updated="none",
            paging="continue",
            notification=None,
            bulk_export=True,
            export_levels=frozenset({"patient", "group"}),
            bulk_retry_after_s=5,
            bulk_polls_until_done=2,
            token_lifetime_s=3600,
            software_name="MEDITECH Expanse",
        ),
        Profile(
            name="medplum",
            resource_types=CLINICAL_TYPES,
            observations=RICH_OBSERVATIONS,
            uuid_version_ids=True,
            # Medplum's CapabilityStatement lists history-instance only, and it routes no {type}/_history.
            history=frozenset({"instance"}),
            name_style="nickname",
            notification="medplum",
            subscription_operations=frozenset(),
            handshake=False,
            payloads=("full-resource",),
            retry=RetryPolicy(max_attempts=5, backoff_initial_s=1.0, backoff_max_s=8.0, window_s=None),
            auth_methods=frozenset({"private_key_jwt", "client_secret_basic", "client_secret_post"}),
            token_lifetime_s=3600,
            token_requests_per_min=160,
            ratelimit_header=True,
            group_read=True,
            software_name="Medplum",
        ),
        Profile(
            name="hapi",
            resource_types=CLINICAL_TYPES,
            observations=RICH_OBSERVATIONS,
            paging="getpages",
            default_count=20,  # HAPI JPA server defaults: pages of 20, at most 200
            max_count=200,
            page_session_s=3600.0,  # HAPI drops cached search results after an hour by default
            history=frozenset({"type", "instance"}),
            notification="hapi",
            subscription_operations=frozenset(),
            handshake=False,
            payloads=("empty", "full-resource"),
            retry=RetryPolicy(max_attempts=1000, backoff_initial_s=1.0, backoff_max_s=10.0, window_s=60.0),
            token_lifetime_s=3600,
            group_read=True,
            software_name="HAPI FHIR Server",
        ),
    )
}


def customize(profile: Profile, overrides: Mapping[str, Any]) -> Profile:
    """The profile with some fields replaced (from a facility's ``profile_overrides``); lists become the
    field's collection type, a mapping becomes a ``RetryPolicy``. Raises ``ValueError``."""
    if not overrides:
        return profile
    names = {f.name for f in fields(profile)}
    changes: dict[str, Any] = {}
    for name, raw in overrides.items():
        if name not in names or name == "name":
            raise ValueError(f"unknown profile field {name!r}")
        current = getattr(profile, name)
        value = raw
        if isinstance(current, frozenset):
            value = frozenset(raw)
        elif isinstance(current, tuple):
            value = tuple(raw)
        elif isinstance(current, RetryPolicy):
            value = RetryPolicy(**raw)
        changes[name] = value
    try:
        return replace(profile, **changes)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None

"""Standard FHIR servers (HAPI FHIR, Medplum): the default behaviour, named so that logs say which.
Both accept ``_id=a,b,c`` searches.

Medplum (EHR-FACTS §1) POSTs the bare resource and says the rest in headers: ``X-Medplum-Subscription``
(the subscription id), ``X-Medplum-Interaction`` (create|update|delete) and, for a delete, whose body is
``{}``, ``X-Medplum-Deleted-Resource: Type/id``. Its adapter turns them into an ``Announcement`` of the
``medplum`` shape; HAPI's payload mode needs no headers (the path says ``Type/id``).
"""

from __future__ import annotations

from collections.abc import Mapping

from app.fhir.notifications import INTERACTIONS, Announcement, NotificationShape
from app.vendors.base import DefaultAdapter

MEDPLUM_HEADER_PREFIX = "x-medplum-"


class HapiAdapter(DefaultAdapter):
    vendor = "hapi"
    # Criteria subscriptions: an empty POST without payload, PUT/DELETE {endpoint}/{Type}/{id} with one;
    # topic subscriptions (backport IG): the standard Bundles.
    notification_shapes: frozenset[NotificationShape] = frozenset(
        {"backport", "backport-0.1", "r4b", "r5", "empty", "put", "delete"}
    )
    # A ``_getpages`` id HAPI no longer holds (its search cache expired) answers 410 Gone.
    paging_expired_statuses = frozenset({410})


class MedplumAdapter(DefaultAdapter):
    vendor = "medplum"
    # R4 criteria subscriptions only: the bare resource with its X-Medplum-* headers.
    notification_shapes: frozenset[NotificationShape] = frozenset({"medplum"})

    def announcement(self, headers: Mapping[str, str]) -> Announcement | None:
        if not any(name.startswith(MEDPLUM_HEADER_PREFIX) for name in headers):
            return None
        interaction = (headers.get("x-medplum-interaction") or "").strip().lower()
        return Announcement(
            shape="medplum",
            subscription=headers.get("x-medplum-subscription") or None,
            interaction=INTERACTIONS.get(interaction),  # an unknown value: the fetch tells
            deleted=headers.get("x-medplum-deleted-resource") or None,
        )

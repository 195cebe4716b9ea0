"""Hypothesis strategies for hostile notification bodies: valid notifications of every shape with any
subtree replaced by any JSON value, and free-form JSON built from the words the parser looks for."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from tests.app.api.fixtures_shapes import (
    backport_010,
    backport_empty,
    backport_full_resource,
    backport_status,
    r4b_bundle,
    r5_bundle,
    subscription_status,
)
from tests.fixtures import BASE, backport_id_only, observation

KEYS = [
    "resourceType", "type", "id", "entry", "resource", "fullUrl", "request", "method", "url", "parameter",
    "name", "part", "valueString", "valueCode", "valueReference", "valueUnsignedInt", "valueInstant",
    "reference", "identifier", "system", "value", "timestamp", "notificationEvent", "eventNumber",
    "focus", "subscription", "status", "topic", "meta", "versionId", "eventsSinceSubscriptionStart",
]  # fmt: skip
WORDS = [
    "Bundle", "Parameters", "SubscriptionStatus", "history", "subscription-notification",
    "notification-event",
    "event-number", "focus", "timestamp", "type", "status", "subscription", "events-since-subscription-start",
    "events-in-notification", "event-notification", "handshake", "heartbeat", "query-event", "PUT", "DELETE",
    "Patient/p1", "Patient/.", "Patient/..", "Subscription/s1", f"{BASE}/Patient/p1", f"{BASE}/Patient/..",
    "https://ehr.test:notaport/fhir/Patient/p1", "https://ehr.test:99999/fhir/Patient/p1",
    "https://[::1/fhir/Patient/p1", "https://evil.example/fhir/Patient/p1", "urn:uuid:1",
    "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-02-30", "2026-11-24T10:00:00Z",
    "active-but-longer-than-16", "x" * 200, "\x00", "\ud800", "²", "9" * 30,
]  # fmt: skip

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)


def _valid_bodies() -> list[dict[str, Any]]:
    obs = observation("o1", "1", "2026-11-24T10:00:00Z")
    event = {"id": "e1", "eventNumber": "1", "focus": {"reference": "Patient/p1"}}
    return [
        backport_id_only([(1, f"{BASE}/Observation/o1"), (2, "Patient/p1")]),
        backport_full_resource(3, obs),
        backport_empty([1, 2]),
        backport_status("heartbeat", 4),
        backport_010(since=2, focuses=["Patient/p1", "Observation/o1"]),
        r4b_bundle(subscription_status([event])),
        r5_bundle(subscription_status([event])),
        obs,
    ]


VALID = _valid_bodies()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated_notifications(draw: st.DrawFn) -> Any:
    """A valid notification of some shape with one to three subtrees replaced by hostile values."""
    body: Any = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(body)))
        replacement = draw(json_values)
        if not path:
            body = replacement
            continue
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = replacement
        if not isinstance(body, (dict, list)):
            break
    return body


hostile_bodies = st.one_of(mutated_notifications(), json_values)

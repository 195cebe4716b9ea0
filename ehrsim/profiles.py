"""Vendor profiles: the behaviour that differs between simulated EHRs.

A facility names its profile in the config. Only ``generic`` (a standards-following FHIR server with
system-wide ``_lastUpdated``) exists so far; vendor quirks are added here as fields, never as
``if profile.name == ...`` branches elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    name: str


PROFILES: dict[str, Profile] = {p.name: p for p in (Profile(name="generic"),)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None

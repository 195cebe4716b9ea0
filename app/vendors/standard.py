"""Standard FHIR servers (HAPI FHIR, Medplum): the default behaviour, named so that logs say which.
Both accept ``_id=a,b,c`` searches."""

from __future__ import annotations

from app.vendors.base import DefaultAdapter


class HapiAdapter(DefaultAdapter):
    vendor = "hapi"


class MedplumAdapter(DefaultAdapter):
    vendor = "medplum"

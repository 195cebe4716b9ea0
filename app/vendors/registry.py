"""Vendor name → adapter. The only place that maps a vendor to its behaviour."""

from __future__ import annotations

from app.vendors.athena import AthenaAdapter
from app.vendors.base import DefaultAdapter, VendorAdapter
from app.vendors.epic import EpicAdapter
from app.vendors.meditech import MeditechAdapter
from app.vendors.oracle import OracleAdapter
from app.vendors.standard import HapiAdapter, MedplumAdapter

ADAPTERS: dict[str, type[DefaultAdapter]] = {
    "epic": EpicAdapter,
    "oracle": OracleAdapter,
    "athena": AthenaAdapter,
    "meditech": MeditechAdapter,
    "medplum": MedplumAdapter,
    "hapi": HapiAdapter,
    "generic": DefaultAdapter,
}


def adapter_for(vendor: str, *, mrn_system: str | None = None) -> VendorAdapter:
    """The adapter for ``vendor`` (a ``facilities.schemas.Vendor``); an unknown name gets the generic one,
    because standard FHIR behaviour is the right guess for a server we have no notes on."""
    return ADAPTERS.get(vendor.strip().lower(), DefaultAdapter)(mrn_system=mrn_system)

"""Vendor adapters: one per EHR vendor behind the ``VendorAdapter`` protocol, chosen by ``adapter_for``."""

from app.fhir.normalize import Normalized
from app.vendors.base import DefaultAdapter, VendorAdapter
from app.vendors.registry import adapter_for

__all__ = ["DefaultAdapter", "Normalized", "VendorAdapter", "adapter_for"]

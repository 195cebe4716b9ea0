"""FHIR R4 parsing that is pure: no I/O, no clock, no database."""

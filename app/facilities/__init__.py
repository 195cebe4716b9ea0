"""Facilities: the EHRs we ingest from, declared in YAML and stored in Postgres."""

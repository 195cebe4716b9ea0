"""Ingestion: notifications into the inbox, inbox rows into current resources."""

"""Talking to a facility's EHR: SMART Backend Services auth, politeness, retries, the base-URL guard."""

"""Feed-health alerts: conditions observed per (facility, source, kind), their state and their sinks."""

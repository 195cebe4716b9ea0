"""The FastAPI edge: webhook routes, health and metrics. Glue only; the logic lives in ``app``."""

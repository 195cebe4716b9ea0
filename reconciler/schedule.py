"""The beat schedule. Every entry fans out cheaply; a second beat process only duplicates harmless work."""

from __future__ import annotations

from typing import Any

from app.queue import (
    ALERTS_TASK,
    CHECK_SUBSCRIPTIONS_TASK,
    GAPS_FAN_OUT_TASK,
    RECONCILE_FAN_OUT_TASK,
    SWEEP_TASK,
)
from app.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "sweep-inbox": {
            "task": SWEEP_TASK,
            "schedule": settings.sweep_interval.total_seconds(),
            # a sweep not started within its interval is superseded by the next: they never pile up
            "options": {"expires": settings.sweep_interval.total_seconds()},
        },
        "check-subscriptions": {
            "task": CHECK_SUBSCRIPTIONS_TASK,
            "schedule": settings.subscription_check_interval.total_seconds(),
            "options": {"expires": settings.subscription_check_interval.total_seconds()},
        },
        "reconcile-fan-out": {
            "task": RECONCILE_FAN_OUT_TASK,
            "schedule": settings.reconcile_tick.total_seconds(),
            "options": {"expires": settings.reconcile_tick.total_seconds()},
        },
        "gaps-fan-out": {  # gaps in subscriptions' event numbers, on the reconciler's tick
            "task": GAPS_FAN_OUT_TASK,
            "schedule": settings.reconcile_tick.total_seconds(),
            "options": {"expires": settings.reconcile_tick.total_seconds()},
        },
        "alerts": {  # feed health, the alert state machine and the sink outbox, in one pass
            "task": ALERTS_TASK,
            "schedule": settings.alert_evaluate_interval.total_seconds(),
            "options": {"expires": settings.alert_evaluate_interval.total_seconds()},
        },
    }

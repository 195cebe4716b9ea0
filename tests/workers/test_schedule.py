"""The beat schedule fans out the subscription checks, to tasks that the worker registers."""

from __future__ import annotations

from datetime import timedelta

from app.queue import CHECK_SUBSCRIPTION_TASK, CHECK_SUBSCRIPTIONS_TASK
from app.settings import Settings
from reconciler.schedule import beat_schedule


def test_subscriptions_are_checked_every_interval_and_a_late_check_is_superseded() -> None:
    settings = Settings(subscription_check_interval=timedelta(minutes=2))

    entry = beat_schedule(settings)["check-subscriptions"]

    assert entry["task"] == CHECK_SUBSCRIPTIONS_TASK
    assert entry["schedule"] == 120.0
    assert entry["options"] == {"expires": 120.0}


def test_the_worker_registers_the_subscription_tasks() -> None:
    import reconciler.tasks  # noqa: F401 - registers the tasks
    from workers.celery_app import celery_app

    assert {CHECK_SUBSCRIPTIONS_TASK, CHECK_SUBSCRIPTION_TASK} <= set(celery_app.tasks)


def test_gaps_are_checked_on_the_reconcile_tick_by_tasks_the_worker_registers() -> None:
    import reconciler.tasks  # noqa: F401 - registers the tasks
    from app.queue import GAPS_FAN_OUT_TASK, GAPS_TASK
    from workers.celery_app import celery_app

    entry = beat_schedule(Settings(reconcile_tick=timedelta(seconds=20)))["gaps-fan-out"]

    assert (entry["task"], entry["schedule"], entry["options"]) == (
        GAPS_FAN_OUT_TASK,
        20.0,
        {"expires": 20.0},
    )
    assert {GAPS_FAN_OUT_TASK, GAPS_TASK} <= set(celery_app.tasks)
    routes = celery_app.conf.task_routes
    assert routes[GAPS_FAN_OUT_TASK] == {"queue": Settings().periodic_queue}
    # a pass's $events reads are recovery, like a reconcile's: on its queue, never ahead of live fetches
    assert routes[GAPS_TASK] == {"queue": Settings().reconcile_queue}

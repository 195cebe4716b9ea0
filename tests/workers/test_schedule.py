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

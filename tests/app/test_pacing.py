"""The doorbell pacer: rings coalesce per facility while a round is in flight, and a refused ring is
counted, never raised."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from app.pacing import Pacer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _until(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, "condition not met before the deadline"
        await asyncio.sleep(0.01)


async def test_rings_during_a_round_collapse_into_one_per_facility_and_failures_are_counted() -> None:
    release = threading.Event()
    rung: list[str] = []
    failures: list[None] = []

    def ring(facility_id: str) -> bool:
        rung.append(facility_id)
        release.wait(5)  # the broker is slow: the first round is in flight while more rings arrive
        return facility_id != "down"

    pacer = Pacer(ring, 0.0, failed=lambda: failures.append(None))
    pacer.start()
    try:
        pacer.ring("a")
        await _until(lambda: rung == ["a"])
        for _ in range(50):
            pacer.ring("b")
            pacer.ring("down")
        release.set()
        await _until(lambda: len(rung) == 3)
        await asyncio.sleep(0.05)  # nothing more comes: the 100 rings were two
        assert rung == ["a", "b", "down"]
        assert len(failures) == 1
    finally:
        release.set()
        await pacer.stop()

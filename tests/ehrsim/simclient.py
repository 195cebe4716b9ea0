"""Small clients of ehrsim's admin and FHIR APIs shared by the simulator's tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx


async def notification_counters(client: httpx.AsyncClient, facility: str = "general") -> dict[str, int]:
    counters: dict[str, int] = (await client.get(f"/_admin/{facility}/notifications")).json()
    return counters


async def settle(
    client: httpx.AsyncClient, wait: Callable[..., Awaitable[None]], changes: int, facility: str = "general"
) -> dict[str, int]:
    """Make ``changes`` changes and wait until the sender has nothing pending; the counters then."""
    await client.post(f"/_admin/{facility}/activity", json={"changes": changes})

    async def settled() -> bool:
        return (await notification_counters(client, facility))["pending"] == 0

    await wait(settled)
    return await notification_counters(client, facility)


async def follow_pages(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """Every searchset page, following ``next`` links verbatim."""
    bundles: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        bundles.append(bundle)
        next_url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    return bundles

"""How many deliveries a relay worker runs at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class DestinationLimits:
    """At most ``limit`` deliveries in flight to one destination (a domain, or the inbound
    routes), like Postfix's default_destination_concurrency_limit: a destination is not
    flooded, and a crash interrupts fewer deliveries to it (fewer duplicates)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: dict[tuple[str, str], asyncio.Semaphore] = {}
        self._users: dict[tuple[str, str], int] = {}

    @contextlib.asynccontextmanager
    async def slot(self, destination: tuple[str, str]) -> AsyncIterator[None]:
        sem = self._slots.setdefault(destination, asyncio.Semaphore(self.limit))
        self._users[destination] = self._users.get(destination, 0) + 1
        try:
            async with sem:
                yield
        finally:
            self._users[destination] -= 1
            if not self._users[destination]:  # forget idle destinations
                del self._users[destination], self._slots[destination]

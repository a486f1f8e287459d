"""How many deliveries a relay worker runs at once: per destination (``DestinationLimits``)
and in all, when receipt needs the event loop (``ReceiptFirst``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


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


class ReceiptFirst:
    """Deliveries give way to receipt when the event loop is the bottleneck.

    A sender waits for its 250 while it is connected; a queued message can wait a little.
    Postfix gets this from its process model (one smtpd process per client against a few
    smtp processes, which the kernel schedules alike); one event loop serves both here, so
    it is done explicitly, the way TCP finds its rate (additive increase, multiplicative
    decrease). Every ``period`` the loop's lag is measured (how late a timer fires). While
    SMTP clients are connected and the lag exceeds ``busy``, the number of deliveries that
    may start at once halves, down to ``floor``; otherwise it grows by one per period, back
    to ``limit``. With no client connected, nothing holds delivery back (e.g. a queue
    flushed after a restart). Deliveries already running are never interrupted, and one
    still running after ``patience`` seconds waits for its remote, not for the loop: it
    stops counting, so slow remote servers never hold up the others."""

    def __init__(self, limit: int, receiving: Callable[[], bool], floor: int = 2,
                 period: float = 0.05, busy: float = 0.005, patience: float = 1.0) -> None:
        self.limit = limit
        self.allowed = limit
        self._receiving = receiving
        self._floor = min(floor, limit)
        self._period = period
        self._busy = busy
        self._patience = patience
        self._running = 0
        self._free = asyncio.Event()
        self._free.set()

    async def run(self) -> None:
        """Adjust ``allowed`` for as long as the relay runs (a task)."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self._period)
            self.adjust(loop.time() - start - self._period)

    def adjust(self, lag: float) -> None:
        """One period's step, given how late the loop was (seconds)."""
        if lag > self._busy and self._receiving():
            self.allowed = max(self._floor, self.allowed // 2)
        elif self.allowed < self.limit:
            self.allowed += 1
        self._update()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        while self._running >= self.allowed:
            self._free.clear()
            await self._free.wait()
        self._running += 1
        self._update()
        counted = True

        def stop_counting() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._running -= 1
                self._update()

        timer = asyncio.get_running_loop().call_later(self._patience, stop_counting)
        try:
            yield
        finally:
            timer.cancel()
            stop_counting()

    def _update(self) -> None:
        if self._running < self.allowed:
            self._free.set()
        else:
            self._free.clear()

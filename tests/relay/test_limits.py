"""Receipt first: deliveries give way while SMTP clients wait on a saturated event loop, and
come back once it is not; with nobody connected nothing holds them back. No network: the
loop is made late on purpose (a callback that blocks it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from connectwiz.relay.limits import ReceiptFirst


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def _busy_loop(stop: asyncio.Event, block: float = 0.02) -> None:
    """Keep the loop late: each turn blocks it for ``block`` seconds."""
    while not stop.is_set():
        time.sleep(block)
        await asyncio.sleep(0)


async def test_deliveries_back_off_while_clients_wait_and_grow_back_after() -> None:
    receiving = True
    pacer = ReceiptFirst(16, receiving=lambda: receiving, floor=2, period=0.01, busy=0.005)
    task = asyncio.create_task(pacer.run())
    stop = asyncio.Event()
    busy = asyncio.create_task(_busy_loop(stop))
    try:
        assert await _until(lambda: pacer.allowed == 2)
        stop.set()
        await busy
        assert await _until(lambda: pacer.allowed == 16)
    finally:
        task.cancel()


async def test_nothing_holds_deliveries_back_when_no_client_is_connected() -> None:
    pacer = ReceiptFirst(16, receiving=lambda: False, floor=2, period=0.01, busy=0.005)
    task = asyncio.create_task(pacer.run())
    stop = asyncio.Event()
    busy = asyncio.create_task(_busy_loop(stop))
    try:
        await asyncio.sleep(0.3)  # some thirty late periods
        assert pacer.allowed == 16
    finally:
        stop.set()
        await busy
        task.cancel()


async def test_a_slot_waits_while_the_allowed_deliveries_run() -> None:
    pacer = ReceiptFirst(4, receiving=lambda: True, floor=2, busy=0.005)
    pacer.adjust(0.05)  # a late loop: 4 -> 2
    assert pacer.allowed == 2
    running, peak = 0, 0
    release = asyncio.Event()

    async def delivery() -> None:
        nonlocal running, peak
        async with pacer.slot():
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    tasks = [asyncio.create_task(delivery()) for _ in range(5)]
    assert await _until(lambda: running == 2)
    await asyncio.sleep(0.05)
    assert running == 2, "a third delivery started beyond the allowed two"
    pacer.adjust(0.0)
    pacer.adjust(0.0)  # two calm periods: back to 4
    assert await _until(lambda: running == 4)
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 4 and running == 0


async def test_a_delivery_waiting_on_a_slow_remote_stops_counting() -> None:
    """Two deliveries stuck on remotes that do not answer must not stop a third from
    starting while the loop is busy."""
    pacer = ReceiptFirst(4, receiving=lambda: True, floor=2, busy=0.005, patience=0.1)
    pacer.adjust(0.05)
    assert pacer.allowed == 2
    stuck = asyncio.Event()
    started: list[int] = []

    async def delivery(n: int, wait: asyncio.Event | None) -> None:
        async with pacer.slot():
            started.append(n)
            if wait is not None:
                await wait.wait()

    slow = [asyncio.create_task(delivery(n, stuck)) for n in (1, 2)]
    assert await _until(lambda: started == [1, 2])
    third = asyncio.create_task(delivery(3, None))
    await asyncio.sleep(0.02)
    assert started == [1, 2], "started before the stuck ones' patience ran out"
    assert await _until(lambda: started == [1, 2, 3], timeout=2)
    await third
    stuck.set()
    await asyncio.gather(*slow)
    # Each delivery stopped counting once: the allowed two, and no more, start again.
    again = asyncio.Event()
    more = [asyncio.create_task(delivery(n, again)) for n in (4, 5, 6)]
    await asyncio.sleep(0.05)
    assert sorted(started[3:]) == [4, 5]
    again.set()
    await asyncio.gather(*more)

"""validate_targets' own guarantees, with scripted servers on 127.0.0.1 (routes by IP)."""

from __future__ import annotations

import asyncio

import pytest

from connectwiz.probe import NetworkOptions, Status, Target, validate_targets

pytestmark = pytest.mark.network


async def test_no_more_probes_in_flight_than_the_concurrency():
    limit, total = 2, 5
    state = {"active": 0, "max": 0, "served": 0}
    cond = asyncio.Condition()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with cond:
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
            cond.notify_all()
            # Hold the greeting until the limit is reached (or no one else can come):
            # a batch that overshot the limit would show up in state["max"].
            await cond.wait_for(
                lambda: state["active"] >= limit or state["served"] + state["active"] == total)
        writer.write(b"554 5.3.2 busy\r\n")
        await writer.drain()
        writer.close()
        async with cond:
            state["active"] -= 1
            state["served"] += 1
            cond.notify_all()

    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(total)]
    try:
        targets = [Target.route("127.0.0.1", s.sockets[0].getsockname()[1]) for s in servers]
        options = NetworkOptions(nameserver=("127.0.0.1", 9), timeout=5.0, concurrency=limit)
        results = await validate_targets(targets, options)
    finally:
        for server in servers:
            server.close()
    assert [r.status for r in results] == [Status.ERROR] * total
    assert all("554 5.3.2 busy" in r.reason for r in results)
    assert state["max"] == limit and state["served"] == total

"""kill -9 again and again while the relay delivers: nothing acknowledged is lost, and what
is delivered twice depends on which process is killed (docs/relay.md, "Durability").

- the process that delivers (``--workers 1``: the relay is one process; Postfix: an smtp
  process killed mid-transaction): its deliveries awaiting their 250 are repeated;
- the parent of several workers (Postfix: the master): the workers finish their
  deliveries and exit, the next relay waits for them, nothing is repeated;
- one of several workers: its deliveries are repeated, the parent stops the others and
  exits 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from connectwiz.lab.smtp import LabMessage
from connectwiz.relay.settings import RelaySettings
from connectwiz.relay.workers import share

from .conftest import body, token, wait_lab
from .test_process import BUNDLE, HoldThenForward, RelayProcess, start_relay

pytestmark = pytest.mark.network

KILLS = 5
MESSAGES = 400
DEFAULT_IN_FLIGHT = RelaySettings().destination_concurrency
Kill = Callable[[RelayProcess], Awaitable[None]]


async def _send_many(port: int, tags: list[str]) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
    await client.connect()
    try:
        for tag in tags:
            await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
    finally:
        client.close()


_TAG = re.compile(rb"^Subject: test ([0-9a-f]+)\r?$", re.MULTILINE)  # conftest.body


def _queue_id(message: LabMessage) -> str:
    """The relay's queue id, from the Received: header it added."""
    found = re.search(rb"\(connectwiz\) with E?SMTPS? id ([0-9A-F]+)", message.data)
    assert found, message.data[:300]
    return found.group(1).decode()


async def _kill_loop(lab, tmp_path: Path, options: tuple[str, ...], kill: Kill) -> int:
    """Acknowledge MESSAGES while the next hop holds deliveries, then ``kill`` the relay
    KILLS times while it delivers, starting the next one at once each time. Asserts that
    nothing is lost and nothing is delivered again after the relay logged it done; returns
    the number of duplicate deliveries (printed)."""
    hop = HoldThenForward((lab.address_of("mail.corp.example"), lab.smtp_port))
    hop_port = await hop.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=hop_port))
    relay = await start_relay(lab, bundle, spool, *options)
    first = len(lab.messages)  # the session's lab has seen thousands: look at ours only
    done_at: dict[str, float] = {}  # queue id -> when the relay logged it "done"

    def note_done(events: list[dict[str, Any]]) -> None:
        for e in events:
            if e.get("event") == "done":
                when = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                done_at.setdefault(e["id"], when)

    waited = 0  # restarts that found the old relay's workers still holding the spool

    async def kill_and_restart(old: RelayProcess) -> RelayProcess:
        nonlocal waited
        await kill(old)
        new = await start_relay(lab, bundle, spool, *options)
        await old.wait_exit()  # every process of the old relay has written its last line
        note_done(old.events)
        waited += any(e.get("event") == "waiting" for e in new.events)
        return new
    try:
        # Everything is acknowledged first while the next hop holds deliveries ...
        tags = [token() for _ in range(MESSAGES)]
        await asyncio.gather(*(_send_many(relay.port, tags[n::10]) for n in range(10)))
        hop.release()
        # ... then the relay is killed again and again while it delivers.
        for _ in range(KILLS):
            relay = await kill_and_restart(relay)
            await relay.wait_event("done", count=MESSAGES // (2 * KILLS), timeout=60)
        relay = await kill_and_restart(relay)

        def copies() -> dict[str, list[LabMessage]]:
            """Each tag's deliveries, in one pass over the messages (polled: a pass per tag
            over a long list kept the event loop busy for minutes in a full run)."""
            found: dict[str, list[LabMessage]] = {tag: [] for tag in tags}
            for m in lab.messages[first:]:
                tag = _TAG.search(m.data)
                if tag and tag.group(1).decode() in found:
                    found[tag.group(1).decode()].append(m)
            return found

        assert await wait_lab(lab, lambda: all(copies().values()), timeout=120), \
            "a message was lost"
        repeated = {tag: found for tag, found in copies().items() if len(found) > 1}
        duplicates = sum(len(found) - 1 for found in repeated.values())
        print(f"{duplicates} duplicate deliveries over {KILLS} kills "
              f"({duplicates / KILLS:.1f} per kill, {MESSAGES} messages, {' '.join(options)}; "
              f"{waited} restarts waited for the old workers)")
        late = [m for found in repeated.values() for m in found
                if m.received.timestamp() > done_at.get(_queue_id(m), float("inf")) + 0.001]
        assert not late, "a message was delivered again after the relay recorded it done"
        return duplicates
    finally:
        await relay.kill()
        await hop.stop()


async def _kill_the_process(relay: RelayProcess) -> None:
    assert await relay.kill_only() == -signal.SIGKILL


@pytest.mark.parametrize("in_flight", [1, DEFAULT_IN_FLIGHT])
async def test_kill_9_of_the_delivering_process_repeats_only_deliveries_awaiting_their_250(
        lab, tmp_path, in_flight: int) -> None:
    """The pid killed is the relay's only process (``--workers 1``): the one delivering, as
    when Postfix's smtp process is killed. At-least-once, and no more than that: a kill may
    repeat a delivery whose final "." was sent and whose 250 the relay had not read yet
    (the next hop has the message, the relay cannot know) — no MTA avoids that — but never
    one whose 250 it read: that is recorded before the relay does anything else. So a kill
    repeats at most the deliveries in flight to the destination at that moment,
    ``--destination-concurrency``, however loaded the machine: with 1, at most one per
    kill. (Before, the 250 waited for the spool executor, behind other messages' fsyncs,
    while the next delivery took the slot: a kill repeated deliveries that had finished,
    more than one per kill even with one in flight.) How many of those in flight a kill
    catches between "." and 250 depends on how long the next hop takes to answer the "."
    (the lab, on this busy machine: most of a delivery)."""
    duplicates = await _kill_loop(
        lab, tmp_path, ("--workers", "1", "--destination-concurrency", str(in_flight)),
        _kill_the_process)
    assert duplicates <= KILLS * in_flight


async def test_kill_9_of_the_parent_repeats_no_delivery(lab, tmp_path) -> None:
    """The pid killed is the parent of two workers (Postfix: the master), at the default
    concurrency, where killing the delivering process repeats several deliveries per
    kill. Each worker finishes the deliveries it has in flight and records them before it
    exits, and the next relay, started at once, reads the spool only once they are gone
    (they hold the spool lock): no delivery can be repeated, so the bound is 0. (Before,
    the workers died with the parent, repeating their deliveries awaiting a 250.)"""
    duplicates = await _kill_loop(lab, tmp_path, ("--workers", "2"), _kill_the_process)
    assert duplicates == 0


async def _kill_worker_0(relay: RelayProcess) -> None:
    """SIGKILL the worker that recovered the spool (it delivers what the last relay left;
    the other delivers only what it received itself)."""
    pid = next(e["pid"] for e in relay.events
               if e.get("event") == "listening" and e.get("worker") == 0)
    os.kill(pid, signal.SIGKILL)
    # The parent stops the other worker (SIGTERM, --shutdown-grace) and exits 1, for the
    # service manager to restart the relay.
    assert await relay.wait_exit(timeout=60) == 1
    assert any(f"relay worker 0 (pid {pid}) exited with status -9; stopping the others"
               in line for line in relay.stderr_lines)


async def test_kill_9_of_a_worker_repeats_its_deliveries_awaiting_their_250(
        lab, tmp_path) -> None:
    """The pid killed is worker 0 of two (Postfix: an smtp process), at the default
    concurrency: its deliveries awaiting their 250 are repeated, at most its share of the
    destination's concurrency; the other worker, stopped with SIGTERM, finishes its own
    within the grace period, or they too are repeated. So at most the relay-wide
    concurrency per kill."""
    duplicates = await _kill_loop(lab, tmp_path, ("--workers", "2"), _kill_worker_0)
    assert duplicates <= KILLS * 2 * share(RelaySettings(), 2).destination_concurrency

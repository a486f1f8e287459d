"""``--workers N``: relay processes sharing one port and one spool."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiosmtplib
import pytest

from .conftest import body, forward, lab_messages, token, wait_lab
from .test_process import BUNDLE, children, start_relay

pytestmark = pytest.mark.network


async def test_workers_share_the_port_and_the_spool_and_exit_after_the_parent(lab,
                                                                              tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool, "--workers", "2")
    try:
        listening = [await relay.wait_event("listening", n) for n in (1, 2)]
        assert {e["worker"] for e in listening} == {0, 1}
        assert listening[0]["port"] == listening[1]["port"]  # SO_REUSEPORT
        workers = children(relay.proc.pid)
        assert len(workers) == 2

        tags = [token() for _ in range(20)]

        async def one(tag: str) -> None:  # a connection each: the kernel spreads them
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
            await client.connect()
            await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
            await client.quit()

        await asyncio.gather(*(one(tag) for tag in tags))
        assert await wait_lab(lab, lambda: all(lab_messages(lab, t) for t in tags), timeout=30)
        await relay.wait_event("done", count=len(tags))
        received = [e for e in relay.events if e.get("event") == "received"]
        assert {e["worker"] for e in received} == {0, 1}  # both processes took mail
        assert all(len(lab_messages(lab, t)) == 1 for t in tags)  # each delivered once

        # SIGKILL to the parent: with nothing in flight, the workers exit at once.
        assert await relay.kill_only() == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            await asyncio.sleep(0.05)
    finally:
        await relay.kill()


async def test_a_worker_dying_on_its_own_stops_the_relay_with_status_1(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool, "--workers", "2")
    try:
        workers = sorted(children(relay.proc.pid))
        os.kill(workers[-1], signal.SIGKILL)
        # The other worker is stopped and the spool left for the next start to recover.
        assert await relay.wait_exit() == 1
        assert any("exited with status -9; stopping the others" in line
                   for line in relay.stderr_lines)
        assert not Path(f"/proc/{workers[0]}").exists()  # stopped and reaped by the parent
    finally:
        await relay.kill()


async def test_without_the_option_the_relay_runs_a_worker_per_core(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool)
    try:
        cores = len(os.sched_getaffinity(0))
        assert (await relay.wait_event("started"))["workers"] == cores
        if cores > 1:
            assert len(children(relay.proc.pid)) == cores
    finally:
        await relay.kill()


class HoldUntilReleased:
    """A next hop that says nothing until the test releases it, then forwards to ``target``:
    a delivery in flight for as long as the test wants."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.held = asyncio.Event()
        self.released = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.set()
        await self.released.wait()
        await forward(reader, writer, self.target)


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   line: bytes) -> bytes:
    writer.write(line)
    return await _reply(reader)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while (line := await asyncio.wait_for(reader.readline(), 30))[3:4] == b"-":
        pass
    return line


async def test_a_killed_parent_s_workers_finish_their_delivery_and_the_next_relay_waits(
        lab, tmp_path) -> None:
    """kill -9 of the parent while a delivery is in flight: the workers stop listening,
    end an idle session with 421, finish a session's open transaction (queued durably
    before its 250, delivered by the next relay, not by them), finish the delivery and
    exit; a relay started meanwhile says it waits for them and starts only once they are
    gone. (Before, the workers died with the parent: the delivery was cut off, and the
    open transaction never got its 250.)"""
    hop = HoldUntilReleased((lab.address_of("mail.corp.example"), lab.smtp_port))
    hop_port = await hop.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=hop_port))
    # The held delivery waits for a greeting far longer than this test takes.
    options = ("--workers", "2", "--greeting-timeout", "300")
    relay = await start_relay(lab, bundle, spool, *options)
    new = None
    sessions: list[asyncio.StreamWriter] = []
    try:
        in_flight, during = token(), token()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.sendmail("x@partner.example", [f"bob-{in_flight}@corp.example"],
                              body(in_flight))
        client.close()
        await asyncio.wait_for(hop.held.wait(), 20)
        idle = await asyncio.open_connection("127.0.0.1", relay.port)
        busy = await asyncio.open_connection("127.0.0.1", relay.port)
        sessions += [idle[1], busy[1]]
        for reader, writer in (idle, busy):
            assert (await _reply(reader)).startswith(b"220")
            assert (await _command(reader, writer, b"EHLO client.example\r\n"))[:3] == b"250"
        for line in (b"MAIL FROM:<x@partner.example>\r\n",
                     f"RCPT TO:<bob-{during}@corp.example>\r\n".encode()):
            assert (await _command(*busy, line))[:3] == b"250"
        old_pid, old_port = relay.proc.pid, relay.port

        assert await relay.kill_only() == -signal.SIGKILL
        draining = await relay.wait_event("stopping", 2)  # both workers
        assert "parent process is gone" in draining["drain"]
        assert (await _reply(idle[0])).startswith(b"421 4.3.2")
        assert await asyncio.wait_for(idle[0].read(), 30) == b""  # and hung up
        with pytest.raises(OSError):  # no worker listens any more
            await asyncio.open_connection("127.0.0.1", old_port)
        assert (await _command(*busy, b"DATA\r\n"))[:3] == b"354"
        reply = await _command(*busy, body(during).replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert reply.startswith(b"250"), reply  # queued durably, as any 250
        assert (await _reply(busy[0])).startswith(b"421 4.3.2")

        new = await start_relay(lab, bundle, spool, *options, started=False)
        waiting = await new.wait_event("waiting")
        assert f"relay pid {old_pid} is gone" in waiting["reason"]
        assert not [e for e in new.events if e.get("event") == "listening"]
        assert not lab_messages(lab, in_flight)  # still held: a worker still drains
        hop.released.set()
        listening = await new.wait_event("listening", timeout=60)
        await relay.wait_exit()
        stopped = [e["ts"] for e in relay.events if e.get("event") == "stopped"]
        assert len(stopped) == 2 and max(stopped) <= listening["ts"], \
            "the new relay started before the old workers were gone"
        assert listening["recovered"] == 1  # the message accepted while draining
        await new.wait_event("done")
        assert await wait_lab(lab, lambda: lab_messages(lab, in_flight)
                              and lab_messages(lab, during), timeout=30)
        old_done = [e["id"] for e in relay.events if e.get("event") == "done"]
        new_done = [e["id"] for e in new.events if e.get("event") == "done"]
        assert len(old_done) == 1 and len(new_done) == 1  # each relay delivered one
        assert len(lab_messages(lab, in_flight)) == 1 and len(lab_messages(lab, during)) == 1
    finally:
        hop.released.set()
        for writer in sessions:
            writer.close()
        await relay.kill()
        if new is not None:
            await new.kill()
        hop.server.close()

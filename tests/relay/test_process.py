"""The relay as a real process: kill -9 and restart, SIGHUP reload, SIGTERM, bad start-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from connectwiz.lab.smtp import LabMessage
from connectwiz.relay.settings import RelaySettings

from .conftest import body, forward, lab_messages, send, token, wait_lab

pytestmark = pytest.mark.network

BUNDLE = """\
schema_version = 1

[organisation]
internal_domains = ["corp.example"]
authorized_outbound = ["127.0.0.1/32"]

[[inbound_routes]]
host = "{route_host}"
port = {route_port}
encryption_mode = "relaxed"
"""

ENFORCED_RECEIPT = """
[[receipt_policies]]
narrative = "Enforced TLS from partners"
option = "enforced"
from = { based_on = "envelope", applies = "domain", specifically = ["enforced.example"] }
to = { applies = "internal" }
"""


class RelayProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.stderr_lines.append(text)
            with contextlib.suppress(ValueError):  # only JSON lines are events
                self.events.append(json.loads(text))
            self._changed.set()
        self._changed.set()

    async def wait_event(self, name: str, count: int = 1, timeout: float = 20) -> dict[str, Any]:
        async def waiter() -> dict[str, Any]:
            while True:
                found = [e for e in self.events if e.get("event") == name]
                if len(found) >= count:
                    return found[count - 1]
                if self.proc.stderr is not None and self.proc.stderr.at_eof() \
                        and self._reader.done():
                    raise AssertionError(f"relay exited before {name!r}: {self.stderr_lines}")
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(waiter(), timeout)

    @property
    def port(self) -> int:
        return next(e["port"] for e in self.events if e.get("event") == "listening")

    async def wait_exit(self, timeout: float = 20) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.wait_exit()


async def start_relay(lab, bundle: Path, spool: Path, *extra: str,
                      wrapper: Sequence[str] = ()) -> RelayProcess:
    """``wrapper``: a command the relay runs under (e.g. strace and its options)."""
    host, port = lab.nameserver
    proc = await asyncio.create_subprocess_exec(
        *wrapper, sys.executable, "-m", "connectwiz", "relay", "--bundle", str(bundle),
        "--listen", "127.0.0.1:0", "--spool", str(spool), "--log-json",
        "--nameserver", f"{host}:{port}", "--smtp-port", str(lab.smtp_port),
        "--ca-file", str(lab.ca_file), "--timeout", "30", "--hostname", "relay.corp.example",
        "--backoff-min", "0.2", "--backoff-max", "0.4", "--shutdown-grace", "5", *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    relay = RelayProcess(proc)
    await relay.wait_event("started")  # every worker listens
    return relay


class HoldThenForward:
    """A next hop under test control: first it accepts connections and says nothing (a
    delivery hangs in flight), later it forwards to a real lab server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.forward = False
        self.held = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if not self.forward:
            self.held.set()
            await reader.read()  # until the relay goes away
            writer.close()
            return
        await forward(reader, writer, self.target)

    async def stop(self) -> None:
        self.server.close()
        for w in self._writers:
            w.close()


async def test_kill_9_during_delivery_then_restart_delivers_once(lab, tmp_path) -> None:
    hop = HoldThenForward((lab.address_of("mail.corp.example"), lab.smtp_port))
    hop_port = await hop.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=hop_port))
    relay = await start_relay(lab, bundle, spool)
    try:
        tag = token()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
        client.close()
        await asyncio.wait_for(hop.held.wait(), 20)  # the delivery is in flight
        assert len(list((spool / "active").glob("*.json"))) == 1
        await relay.kill()  # SIGKILL: no chance to clean up
        assert relay.proc.returncode == -signal.SIGKILL

        hop.forward = True
        relay = await start_relay(lab, bundle, spool)
        assert (await relay.wait_event("listening"))["recovered"] == 1
        await relay.wait_event("done")
        assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
        assert not list((spool / "active").glob("*")) and not list((spool / "queue").glob("*"))
        assert len(lab_messages(lab, tag)) == 1, "delivered exactly once"
    finally:
        await relay.kill()
        await hop.stop()


async def test_the_relay_process_runs_on_uvloop_and_relays_over_tls(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool)
    try:
        assert (await relay.wait_event("listening"))["loop"] == "uvloop"  # a dependency on Linux
        tag = token()
        await send(relay.port, "x@partner.example", [f"bob-{tag}@corp.example"], body(tag),
                   tls=True)  # aiosmtpd's STARTTLS on uvloop's transports
        assert (await relay.wait_event("attempt"))["tls"] == "TLSv1.3"  # uvloop's start_tls
        assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
        assert lab_messages(lab, tag)[0].tls_version == "TLSv1.3"
    finally:
        await relay.kill()


async def _plaintext_reply(port: int, sender: str) -> int:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    try:
        await client.ehlo()
        await client.mail(sender)
        return (await client.rcpt("bob@corp.example")).code
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code
    finally:
        client.close()


async def test_sighup_reload_refuses_a_broken_bundle_and_keeps_the_old_policy(lab,
                                                                             tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    good = BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port)
    bundle.write_text(good + ENFORCED_RECEIPT)
    relay = await start_relay(lab, bundle, spool)
    try:
        assert await _plaintext_reply(relay.port, "p@enforced.example") == 530
        bundle.write_text(good + ENFORCED_RECEIPT.replace('"enforced"', '"enforcd"'))
        workers = (await relay.wait_event("started"))["workers"]  # each one reloads
        relay.proc.send_signal(signal.SIGHUP)
        refused = await relay.wait_event("reload-refused", workers)
        assert "enforcd" in refused["reason"] and "bundle.toml" in refused["reason"]
        assert await _plaintext_reply(relay.port, "p@enforced.example") == 530
        bundle.write_text(good)  # a valid bundle without the receipt policy
        relay.proc.send_signal(signal.SIGHUP)
        await relay.wait_event("reloaded", workers)
        assert await _plaintext_reply(relay.port, "p@enforced.example") == 250
    finally:
        await relay.kill()


async def test_sigterm_finishes_the_open_session_and_exits_0(lab, tmp_path) -> None:
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="mail.corp.example", route_port=lab.smtp_port))
    relay = await start_relay(lab, bundle, spool)
    try:
        tag = token()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.ehlo()
        await client.mail("x@partner.example")
        await client.rcpt(f"bob-{tag}@corp.example")
        relay.proc.send_signal(signal.SIGTERM)
        await relay.wait_event("stopping", (await relay.wait_event("started"))["workers"])
        with pytest.raises(OSError):  # no longer listening (no worker is)
            await asyncio.open_connection("127.0.0.1", relay.port)
        reply = await client.data(body(tag))
        assert reply.code == 250
        await client.quit()
        assert await relay.wait_exit() == 0
        stopped = relay.events[-1]
        assert stopped["event"] == "stopped"
        # Accepted during shutdown: delivered then, or kept for the next start.
        delivered = bool(lab_messages(lab, tag))
        assert delivered or stopped["incoming"] == 1
    finally:
        await relay.kill()


async def test_broken_bundle_at_start_is_a_one_line_error(lab, tmp_path) -> None:
    bundle = tmp_path / "bundle.toml"
    bundle.write_text("schema_version = 1\n[organisation\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connectwiz", "relay", "--bundle", str(bundle),
        "--listen", "127.0.0.1:0", "--spool", str(tmp_path / "spool"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CONNECTWIZ_NAMESERVER": "127.0.0.1:9"})
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = [ln for ln in err.decode().splitlines() if not ln.startswith("20")]
    assert len(lines) == 1 and lines[0].startswith("connectwiz: ") and "bundle.toml" in lines[0]
    assert "Traceback" not in err.decode()


async def test_sigterm_with_a_hanging_delivery_exits_in_time_and_keeps_the_message(
        lab, tmp_path) -> None:
    hop = HoldThenForward((lab.address_of("mail.corp.example"), lab.smtp_port))
    hop_port = await hop.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=hop_port))
    relay = await start_relay(lab, bundle, spool, "--shutdown-grace", "0.5")
    try:
        tag = token()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False)
        await client.connect()
        await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
        client.close()
        await asyncio.wait_for(hop.held.wait(), 20)
        relay.proc.send_signal(signal.SIGTERM)
        assert await relay.wait_exit() == 0  # the grace period bounds the wait
        assert relay.events[-1]["event"] == "stopped"
        assert len(list((spool / "active").glob("*.json"))) == 1, "kept for the next start"

        hop.forward = True
        relay = await start_relay(lab, bundle, spool)
        await relay.wait_event("done")
        assert await wait_lab(lab, lambda: len(lab_messages(lab, tag)) == 1)
    finally:
        await relay.kill()
        await hop.stop()


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a process so far (kB), from the kernel."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _raw_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), 60)
        assert line, "connection closed"
        if line[3:4] != b"-":
            return line


async def test_ten_megabytes_of_empty_lines_cost_bounded_memory_and_others_are_served(
        lab, tmp_path) -> None:
    # Deliveries go nowhere (a closed port) and are deferred: only receipt is measured.
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=closed_port))
    # One process, so that the memory measured is the process receiving the sessions.
    relay = await start_relay(lab, bundle, spool, "--workers", "1")
    writers = []
    try:
        before = _vm_hwm_kib(relay.proc.pid)
        half = b"\r\n" * 2_500_000  # 5 MB; two halves stay under --max-size (10240000)
        floods = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writers.append(writer)
            await _raw_reply(reader)
            for line in (b"EHLO flood\r\n", b"MAIL FROM:<x@partner.example>\r\n",
                         b"RCPT TO:<bob@corp.example>\r\n", b"DATA\r\n"):
                writer.write(line)
                assert (await _raw_reply(reader))[:1] in (b"2", b"3")
            writer.write(b"Subject: empty lines\r\n\r\n" + half)
            await writer.drain()
            floods.append((reader, writer))
        # Four sessions are in the middle of their DATA: another client is served now.
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False,
                                 timeout=30)
        await client.connect()
        assert (await client.noop()).code == 250
        assert (await client.sendmail("x@partner.example", ["bob@corp.example"],
                                      body(token())))[1].startswith("2.0.0 Ok: queued")
        client.close()
        for _, writer in floods:
            writer.write(half + b".\r\n")
            await writer.drain()
        for reader, _ in floods:
            assert (await _raw_reply(reader)).startswith(b"250 2.0.0")
        grown_mib = (_vm_hwm_kib(relay.proc.pid) - before) / 1024
        # aiosmtpd's line list cost ~0.5 GiB per such session; streamed, four sessions
        # and the deliveries that read each 10 MB message back stay far below this.
        print(f"peak resident memory grew by {grown_mib:.1f} MiB")
        assert grown_mib < 150
        stored = sorted(p.stat().st_size for p in (spool / "queue").glob("*.msg"))
        assert len(stored) == 5 and stored[-1] > 10_000_000
    finally:
        for writer in writers:
            writer.close()
        await relay.kill()


async def _send_many(port: int, tags: list[str]) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
    await client.connect()
    try:
        for tag in tags:
            await client.sendmail("x@partner.example", [f"bob-{tag}@corp.example"], body(tag))
    finally:
        client.close()


KILLS = 5
MESSAGES = 400


@pytest.mark.parametrize("in_flight", [1, RelaySettings().destination_concurrency])
async def test_kill_9_loop_loses_nothing_and_repeats_only_deliveries_awaiting_their_250(
        lab, tmp_path, in_flight: int) -> None:
    """At-least-once, and no more than that: a kill may repeat a delivery whose final "."
    was sent and whose 250 the relay had not read yet (the next hop has the message, the
    relay cannot know) — no MTA avoids that — but never one whose 250 it read: that is
    recorded before the relay does anything else. So a kill repeats at most the deliveries
    in flight to the destination at that moment, ``--destination-concurrency``, however
    loaded the machine: with 1, at most one per kill. (Before, the 250 waited for the spool
    executor, behind other messages' fsyncs, while the next delivery took the slot: a kill
    repeated deliveries that had finished, more than one per kill even with one in flight.)
    How many of those in flight a kill catches between "." and 250 depends on how long the
    next hop takes to answer the "." (the lab, on this busy machine: most of a delivery)."""
    hop = HoldThenForward((lab.address_of("mail.corp.example"), lab.smtp_port))
    hop_port = await hop.start()
    bundle, spool = tmp_path / "bundle.toml", tmp_path / "spool"
    bundle.write_text(BUNDLE.format(route_host="127.0.0.1", route_port=hop_port))
    limit = ("--destination-concurrency", str(in_flight))
    relay = await start_relay(lab, bundle, spool, *limit)
    done_at: dict[str, float] = {}  # queue id -> when the relay logged it "done"

    def note_done(events: list[dict[str, Any]]) -> None:
        for e in events:
            if e.get("event") == "done":
                when = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
                done_at.setdefault(e["id"], when)
    try:
        # Everything is acknowledged first while the next hop holds deliveries ...
        tags = [token() for _ in range(MESSAGES)]
        await asyncio.gather(*(_send_many(relay.port, tags[n::10]) for n in range(10)))
        hop.forward = True
        # ... then the relay is killed again and again while it delivers.
        for _ in range(KILLS):
            await relay.kill()
            note_done(relay.events)
            relay = await start_relay(lab, bundle, spool, *limit)
            await relay.wait_event("done", count=MESSAGES // (2 * KILLS), timeout=60)
        await relay.kill()
        note_done(relay.events)
        relay = await start_relay(lab, bundle, spool, *limit)

        def copies() -> dict[str, list[LabMessage]]:
            seen = list(lab.messages)
            return {tag: [m for m in seen if tag.encode() in m.data] for tag in tags}

        assert await wait_lab(lab, lambda: all(copies().values()), timeout=120), \
            "a message was lost"
        repeated = {tag: found for tag, found in copies().items() if len(found) > 1}
        duplicates = sum(len(found) - 1 for found in repeated.values())
        print(f"{duplicates} duplicate deliveries over {KILLS} kills "
              f"({duplicates / KILLS:.1f} per kill, {MESSAGES} messages, "
              f"{in_flight} in flight per destination)")
        late = [m for found in repeated.values() for m in found
                if m.received.timestamp() > done_at.get(_queue_id(m), float("inf")) + 0.001]
        assert not late, "a message was delivered again after the relay recorded it done"
        assert duplicates <= KILLS * in_flight
    finally:
        await relay.kill()
        await hop.stop()


def _queue_id(message: LabMessage) -> str:
    """The relay's queue id, from the Received: header it added."""
    found = re.search(rb"\(connectwiz\) with E?SMTPS? id ([0-9A-F]+)", message.data)
    assert found, message.data[:300]
    return found.group(1).decode()

"""The relay as a real process: kill -9 and restart, SIGHUP reload, SIGTERM, bad start-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

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


def children(pid: int) -> set[int]:
    """The processes ``pid`` started (a relay's workers)."""
    with contextlib.suppress(FileNotFoundError):  # gone
        return {int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()}
    return set()


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
        """SIGKILL the relay and its workers at once, as a crash of the whole relay (the
        workers of a parent killed alone would drain first); ``kill_only`` kills just the
        parent."""
        if self.proc.returncode is None:
            for pid in [*children(self.proc.pid), self.proc.pid]:
                with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                    os.kill(pid, signal.SIGKILL)
        await self.wait_exit()

    async def kill_only(self) -> int:
        """SIGKILL the process and return its status as soon as it has exited (its workers
        may live on). asyncio's ``wait()`` would also wait for them: for the stderr pipe."""
        self.proc.kill()
        deadline = asyncio.get_running_loop().time() + 20
        while self.proc.returncode is None:  # set once the process is reaped
            assert asyncio.get_running_loop().time() < deadline, "SIGKILL did not end it"
            await asyncio.sleep(0.02)
        return self.proc.returncode


async def start_relay(lab, bundle: Path, spool: Path, *extra: str,
                      wrapper: Sequence[str] = (), started: bool = True) -> RelayProcess:
    """``wrapper``: a command the relay runs under (e.g. strace and its options);
    ``started``: return once every worker listens (else at once)."""
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
    if started:
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

    def release(self) -> None:
        """Forward from now on, and hang up on the deliveries held so far (they are retried
        after the backoff): a relay that drains would otherwise wait for their greeting."""
        self.forward = True
        for w in self._writers:
            w.close()

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
        await relay.kill()  # SIGKILL to every process of the relay: none can finish it
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
